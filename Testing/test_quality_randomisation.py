"""Adebayo et al.'s cascading randomisation: similarity on the union support (oracles: scipy's spearmanr on the
support's voxels, skimage's structural_similarity for the SSIM map), the cascade's order and cumulativeness read
from the network itself, and the two behaviours the test exists to tell apart: a map that ignores the model
(edge map) stays at 1, a gradient map of a conv net decorrelates."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from SegXAILib.controls import edge_map
from SegXAILib.randomisation import (cascading_randomisation, compare_maps, parameter_layers, randomised_copy,
                                     spearman, ssim, ssim_map)

torch.set_num_threads(1)


def sparse_pair(seed=0, shape=(20, 20, 20), support=0.1):
    """Two independent maps sharing one 10 % support."""
    rng = np.random.default_rng(seed)
    on = rng.random(shape) < support
    a, b = np.zeros(shape), np.zeros(shape)
    a[on], b[on] = rng.random(on.sum()) + 0.01, rng.random(on.sum()) + 0.01
    return a, b, on


def test_independent_maps_score_near_zero_on_the_union_support_and_a_map_against_itself_one():
    a, b, on = sparse_pair()
    whole_volume = spearmanr(a.ravel(), b.ravel())[0]
    assert whole_volume > 0.9  # the defect: zeros tie in both maps
    assert abs(spearman(a, b)) < 0.1
    assert spearman(a, b) == pytest.approx(spearmanr(a[on], b[on])[0], abs=1e-12)
    assert abs(ssim(a, b)) < 0.15
    assert spearman(a, a) == pytest.approx(1.0) and ssim(a, a) == pytest.approx(1.0)
    assert spearman(a, 3 * a) == pytest.approx(1.0) and ssim(a, 3 * a) == pytest.approx(1.0)  # scale-free


def test_signed_maps_are_also_compared_on_absolute_values():
    a, b, on = sparse_pair(1)
    flip = np.where(np.random.default_rng(2).random(a.shape) < 0.5, -1, 1)
    out = compare_maps(a, a * flip)  # same magnitudes, random signs
    assert out["spearman_abs"] == pytest.approx(1.0) and out["ssim_abs"] == pytest.approx(1.0)
    assert out["spearman"] < 0.5
    assert "spearman_abs" not in compare_maps(a, b)  # non-negative maps: the signed figures are the figures


def test_ssim_map_equals_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((12, 13, 14))
    b = 0.6 * a + 0.4 * rng.random(a.shape)
    _, full = skimage_metrics.structural_similarity(a, b, data_range=1.0, full=True)
    assert np.allclose(ssim_map(a, b, 1.0), full, atol=1e-10)


class TopDown(torch.nn.Module):
    """Registered in an order that differs from the order the layers run in."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv3d(4, 1, 3, padding=1)
        self.stem = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.middle = torch.nn.Conv3d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.middle(torch.relu(self.stem(x)))))


def gradient_map(net, x):
    x = x.clone().requires_grad_(True)
    net(x).sum().backward()
    return x.grad[0, 0].numpy().copy()


def test_cascade_randomises_top_down_and_cumulatively_and_leaves_the_network_alone():
    torch.manual_seed(0)
    net = TopDown().eval()
    x = torch.rand(1, 1, 10, 10, 10)
    order = parameter_layers(net, x)
    assert order == ["head", "middle", "stem"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    changed_per_step = []

    def explain(clone):
        changed = [name for name in ("head", "middle", "stem")
                   if not torch.equal(getattr(clone, name).weight, before[f"{name}.weight"])]
        changed_per_step.append(changed)
        return gradient_map(clone, x)

    original = gradient_map(net, x)
    result = cascading_randomisation(net, explain, original, example_input=x)
    assert changed_per_step == [["head"], ["head", "middle"], ["head", "middle", "stem"]]
    assert [s["layers"] for s in result["steps"]] == [["head"], ["middle"], ["stem"]]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    from SegXAILib.quality import SCORES

    assert {k for k in result if k.startswith("randomisation_")} <= set(SCORES)
    # a gradient map of the trained net decorrelates once the model is random
    assert result["randomisation_spearman_abs"] < 0.5 and result["steps"][-1]["spearman"] < 0.5


def test_a_map_that_ignores_the_model_scores_one_at_every_step():
    torch.manual_seed(0)
    net = TopDown().eval()
    image = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    edges = edge_map(image)
    result = cascading_randomisation(net, lambda clone: edge_map(image), edges, groups=2)
    assert len(result["steps"]) == 2
    for step in result["steps"]:
        assert step["spearman"] == pytest.approx(1.0) and step["ssim"] == pytest.approx(1.0)


def test_randomised_copy_changes_every_layer_and_not_the_original():
    torch.manual_seed(0)
    net = TopDown()
    before = [p.detach().clone() for p in net.parameters()]
    clone = randomised_copy(net, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))
    assert all(not torch.equal(p, q) for p, q in zip(clone.parameters(), net.parameters()))


class WithEmbedding(torch.nn.Module):
    """A parameter owned by the root and used in the middle, as TransUNet's position embedding is."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv3d(1, 2, 1)
        self.head = torch.nn.Conv3d(2, 1, 1)
        self.position = torch.nn.Parameter(torch.zeros(1, 2, 1, 1, 1))

    def forward(self, x):
        return self.head(self.stem(x) + self.position)


def test_layer_order_follows_where_parameters_are_used():
    net = WithEmbedding()
    assert parameter_layers(net, torch.rand(1, 1, 4, 4, 4)) == ["head", "", "stem"]
