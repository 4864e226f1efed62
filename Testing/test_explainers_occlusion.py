"""Occlusion / supervoxel ablation of the blended target score F.

Oracles: captum's ``Occlusion`` and ``FeatureAblation`` applied to the single-graph blended function (MONAI's own
``sliding_window_inference`` over the whole volume, every window in one batch, in float64) — each perturbation
re-scores all windows, so they also check that re-scoring only the overlapping windows changes nothing; the
patches captum itself occludes, counted against MONAI's windows, for the work saved; and models whose true
attribution is known (a pointwise additive net, a linear convolutional net).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers.occlusion import Occlusion
from SegXAILib.explainers.tiling import explain_tiled

from helpers import bn_net

torch.set_num_threads(1)
captum_attr = pytest.importorskip("captum.attr")

PATCH, OVERLAP, SHAPE, CLASS = (8, 8, 8), 0.5, (14, 13, 12), 1




def problem():
    image = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    region = np.zeros(SHAPE, dtype=bool)
    region[2:9, 3:11, 1:7] = True
    baseline = np.random.default_rng(4).random(SHAPE).astype(np.float32) * 0.5
    return image, region, baseline


def blended_score(net, region):
    """F(x) = Σ_M y_c of MONAI's Gaussian-blended sliding window, every window in one batch, float64."""
    from monai.inferers import sliding_window_inference

    net64 = copy.deepcopy(net).double()
    mask = torch.from_numpy(region)

    def score(x):
        with torch.no_grad():
            y = sliding_window_inference(x.double(), PATCH, 10_000, net64, OVERLAP, mode="gaussian")
        return (y[:, CLASS] * mask).flatten(1).sum(1)

    return score


def as_input(array):
    return torch.from_numpy(array)[None, None].double()


def test_occlusion_equals_captum_occlusion_on_the_single_graph():
    net, (image, region, base) = bn_net(), problem()
    ours, totals = explain_tiled(Occlusion(patch_voxels=3, stride=2, within_mm=None, batch=16), net, image, CLASS, region, PATCH,
                                 OVERLAP, baseline=base)
    f = blended_score(net, region)
    # overlapping 3-voxel patches at stride 2; 14 - 3 is odd, so captum's last patch is cut at the edge
    oracle = captum_attr.Occlusion(f).attribute(as_input(image), sliding_window_shapes=(1, 3, 3, 3), strides=(1, 2, 2, 2),
                                                baselines=as_input(base), perturbations_per_eval=32)[0, 0].numpy()
    assert np.abs(oracle).max() > 0 and (np.abs(oracle) > 1e-3 * np.abs(oracle).max()).mean() > 0.5
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())
    assert totals["score"] == pytest.approx(float(f(as_input(image))), rel=1e-6)


def test_supervoxel_ablation_equals_captum_feature_ablation():
    from skimage.segmentation import slic

    net, (image, region, _) = bn_net(), problem()
    labels = slic(image.astype(np.float64), n_segments=40, compactness=1.0, channel_axis=None, start_label=1)
    assert labels.min() == 1 and labels.max() > 10
    ours, _ = explain_tiled(Occlusion(supervoxels=labels, fill="value", value=0.25), net, image, CLASS, region, PATCH, OVERLAP)
    oracle = captum_attr.FeatureAblation(blended_score(net, region)).attribute(
        as_input(image), baselines=0.25, feature_mask=torch.from_numpy(labels)[None, None], perturbations_per_eval=32)[0, 0].numpy()
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())


def test_slic_supervoxels_inside_the_area_are_ablated_whole():
    """supervoxels=True: SLIC on the image inside the target's box + margin; each supervoxel gets one value, the
    one captum's FeatureAblation gives for skimage's own SLIC labels of that box."""
    from skimage.segmentation import slic

    net, (image, region, base) = bn_net(), problem()
    explainer = Occlusion(patch_voxels=3, supervoxels=True, within_voxels=1, compactness=1.0)
    ours, _ = explain_tiled(explainer, net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    box = (slice(1, 10), slice(2, 12), slice(0, 8))  # region [2:9, 3:11, 1:7] grown by 1, clipped to the volume
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[box] = slic(image[box].astype(np.float64), n_segments=round(image[box].size / 27), compactness=1.0,
                       channel_axis=None, start_label=1)
    oracle = captum_attr.FeatureAblation(blended_score(net, region)).attribute(
        as_input(image), baselines=as_input(base), feature_mask=torch.from_numpy(labels)[None, None],
        perturbations_per_eval=32)[0, 0].numpy()
    oracle[labels == 0] = 0.0  # label 0 (outside the area) is never occluded by ours
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())


def test_torchscript_network_gives_the_same_map():
    net, (image, region, base) = bn_net(), problem()
    explainer = Occlusion(patch_voxels=4, within_mm=None)
    eager, _ = explain_tiled(explainer, net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    scripted, _ = explain_tiled(explainer, torch.jit.script(net), image, CLASS, region, PATCH, OVERLAP, baseline=base)
    assert np.abs(eager).max() > 0
    np.testing.assert_allclose(scripted, eager, rtol=1e-5, atol=1e-6 * np.abs(eager).max())


class Counting(nn.Module):
    """Counts the windows a network is run on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.windows, self.calls = net, 0, 0

    def forward(self, x):
        self.windows += x.shape[0]
        self.calls += 1
        return self.net(x)


def planned_window_forwards(image, region, fill, size, stride):
    """(window forwards needed, patches, MONAI's windows): each target window once, plus every (patch, target
    window) pair that overlaps where the fill differs from the image; patches as captum builds them, windows
    from MONAI's own coordinates."""
    from monai.inferers import sliding_window_inference

    coords = []
    sliding_window_inference(torch.from_numpy(image)[None, None], PATCH, 10_000,
                             lambda w, where: (coords.extend(where), w)[1], OVERLAP, mode="gaussian", with_coord=True)
    windows = [tuple(where[2:]) for where in coords]
    target = [w for w in windows if region[w].any()]
    patches = []  # each occluded box, as captum builds it (ones occluded by zeros)

    def record(x):
        patches.extend(x[:, 0] == 0)
        return torch.zeros(x.shape[0])

    captum_attr.Occlusion(record).attribute(torch.ones((1, 1) + SHAPE), sliding_window_shapes=(1,) + (size,) * 3,
                                            strides=(1,) + (stride,) * 3, baselines=0.0, perturbations_per_eval=1)
    patches = [p.numpy() for p in patches[1:]]  # the first call is captum's unperturbed evaluation
    changed = [p for p in patches if (image[p] != fill[p]).any()]
    return len(target) + sum(bool(p[w].any()) for p in changed for w in target), patches, windows, len(target)


def test_only_overlapping_target_windows_are_rescored():
    """The windows each patch invalidates, counted from MONAI's own window coordinates and captum's own patches."""
    net, (image, region, base) = bn_net(), problem()
    counting = Counting(net)
    _, totals = explain_tiled(Occlusion(patch_voxels=4, stride=3, within_mm=None, batch=5), counting, image, CLASS, region,
                              PATCH, OVERLAP, baseline=base)
    expected, patches, windows, target = planned_window_forwards(image, region, base, 4, 3)
    full = (len(patches) + 1) * len(windows)  # what re-scoring every window for every patch costs
    assert totals["window_evaluations"] == counting.windows == expected
    assert totals["forward_passes"] == counting.calls == -(-target // 5) + -(-(expected - target) // 5)
    assert totals["full_rescoring_window_evaluations"] == full and expected < 0.6 * full
    assert totals["features"] == len(patches)


def test_patches_the_fill_leaves_unchanged_cost_nothing_and_score_zero():
    """A constant fill equal to the image over a slab (air filled with 0): those patches need no forward, and
    the map still equals captum's, which re-scores them."""
    net, (image, region, _) = bn_net(), problem()
    image = image.copy()
    image[:, :, :5] = 0.0
    counting = Counting(net)
    ours, totals = explain_tiled(Occlusion(patch_voxels=4, stride=3, within_mm=None, fill="value", value=0.0), counting,
                                 image, CLASS, region, PATCH, OVERLAP)
    expected, patches, windows, _ = planned_window_forwards(image, region, np.zeros(SHAPE, np.float32), 4, 3)
    unskipped, *_ = planned_window_forwards(image, region, np.full(SHAPE, -1.0, np.float32), 4, 3)
    assert counting.windows == totals["window_evaluations"] == expected < unskipped
    oracle = captum_attr.Occlusion(blended_score(net, region)).attribute(
        as_input(image), sliding_window_shapes=(1, 4, 4, 4), strides=(1, 3, 3, 3), baselines=0.0,
        perturbations_per_eval=32)[0, 0].numpy()
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())


def test_one_voxel_occlusion_recovers_an_additive_models_true_attribution():
    """A pointwise net: F = Σ_M h_c(x(u)), so voxel u's true attribution is h_c(x(u)) − h_c(x′(u)) on M, 0 elsewhere."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 4, 1), nn.Tanh(), nn.Conv3d(4, 3, 1)).eval()
    image, region, base = problem()
    ours, _ = explain_tiled(Occlusion(patch_voxels=1, within_mm=None, batch=16), net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    with torch.no_grad():
        def h(a):  # the net on the whole volume at once: no windows, no blend
            return net(torch.from_numpy(a)[None, None])[0, CLASS].numpy()

        truth = np.where(region, h(image) - h(base), 0.0)
    np.testing.assert_allclose(ours, truth, rtol=1e-4, atol=1e-5 * np.abs(truth).max())


def test_one_voxel_occlusion_of_a_linear_conv_net_is_gradient_times_difference():
    """A linear net (convs that cross window edges, blended): F is linear, so the true attribution is (x − x′) ⊙ ∇F,
    ∇F from autograd through MONAI's single-graph sliding window."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.Conv3d(3, 3, 3, padding=1)).eval()
    image, region, base = problem()
    ours, _ = explain_tiled(Occlusion(patch_voxels=1, within_mm=None, batch=16), net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    x = torch.from_numpy(image)[None, None].double().requires_grad_(True)
    y = sliding_window_inference(x, PATCH, 10_000, copy.deepcopy(net).double(), OVERLAP, mode="gaussian")
    (grad,) = torch.autograd.grad((y[0, CLASS] * torch.from_numpy(region)).sum(), x)
    truth = ((image - base) * grad[0, 0].numpy())
    assert (np.abs(truth) > 0).mean() > 0.5  # the convolutions spread the target beyond the region
    np.testing.assert_allclose(ours, truth, rtol=1e-4, atol=1e-5 * np.abs(truth).max())


def test_within_limits_the_occluded_area_to_the_targets_box_plus_margin():
    torch.manual_seed(1)  # two 3³ convolutions: voxels up to 2 away from the region change F
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 4, 3, padding=1), nn.Tanh(),
                        nn.Conv3d(4, 3, 1)).eval()
    image, region, base = problem()
    whole, _ = explain_tiled(Occlusion(patch_voxels=1, within_mm=None, batch=16), net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    # spacing given as i, j, k = 2, 4, 4 mm: a 4 mm margin is 2 voxels along i, 1 along j and k
    near, _ = explain_tiled(Occlusion(patch_voxels=1, within_mm=4.0, spacing=(2.0, 4.0, 4.0), batch=16), net, image, CLASS, region,
                            PATCH, OVERLAP, baseline=base)
    box = np.zeros(SHAPE, dtype=bool)
    box[1:10, 2:12, 0:9] = True  # [2:9, 3:11, 1:7] grown by (1, 1, 2), clipped to the volume
    assert np.abs(whole[~box]).max() > 1e-3 * np.abs(whole).max()  # occlusion outside the box would have mattered
    np.testing.assert_allclose(near[box], whole[box], rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    assert np.all(near[~box] == 0)


def test_captum_style_attribute_call_equals_captum_occlusion():
    net, (image, region, base) = bn_net(), problem()
    cube = (slice(0, 12),) * 3  # one volume of even size through the net (its strided conv halves it)
    x, b = torch.from_numpy(image[cube])[None, None], torch.from_numpy(base[cube])[None, None]
    weights = torch.from_numpy(region[cube])[None].float() * 0.5
    result = Occlusion(patch_voxels=5, stride=4, within_mm=None).attribute(net, x, CLASS, weights, b)
    net64 = copy.deepcopy(net).double()
    oracle = captum_attr.Occlusion(lambda v: (net64(v)[:, CLASS] * weights.double()).flatten(1).sum(1)).attribute(
        x.double(), sliding_window_shapes=(1, 5, 5, 5), strides=(1, 4, 4, 4), baselines=b.double())[0, 0].numpy()
    np.testing.assert_allclose(result.maps[0].numpy(), oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())


def test_patch_mm_uses_the_cards_spacing_order():
    explainer = Occlusion(patch_mm=12.0, spacing=(2.0, 3.0, 4.0), within_mm=None)  # card order: i, j, k
    assert explainer.patch == (3, 4, 6)  # array axes k, j, i


@pytest.mark.parametrize("kwargs,needle", [
    ({"fill": "noise"}, "unknown occlusion fill"),
    ({"patch_voxels": 3, "stride": 4, "within_mm": None}, "larger than the patch"),
    ({"patch_mm": 18.0, "within_mm": None}, "spacing"),
    ({"within_mm": 30.0}, "spacing"),
])
def test_bad_options_are_one_line_errors(kwargs, needle):
    with pytest.raises(SegXAIError, match=needle):
        Occlusion(**kwargs)


def test_baseline_fill_without_a_baseline_is_an_error():
    net, (image, region, _) = bn_net(), problem()
    with pytest.raises(SegXAIError, match="needs a baseline"):
        explain_tiled(Occlusion(within_mm=None), net, image, CLASS, region, PATCH, OVERLAP)


def test_progress_reaches_one_and_cancel_stops_the_forwards():
    from SegXAILib.inference import Cancelled, CancelToken

    net, (image, region, base) = bn_net(), problem()
    seen = []
    explain_tiled(Occlusion(patch_voxels=4, within_mm=None), net, image, CLASS, region, PATCH, OVERLAP, baseline=base,
                  progress=lambda stage, f: seen.append((stage, f)), stage="occlusion")
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 10
    assert {s for s, _ in seen} == {"occlusion"}
    token, counting = CancelToken(), Counting(net)

    def cancel_at_half(stage, f):
        if f >= 0.5:
            token.cancel()

    with pytest.raises(Cancelled):
        explain_tiled(Occlusion(patch_voxels=4, within_mm=None), counting, image, CLASS, region, PATCH, OVERLAP,
                      baseline=base, progress=cancel_at_half, cancel=token)
    _, totals = explain_tiled(Occlusion(patch_voxels=4, within_mm=None), net, image, CLASS, region, PATCH, OVERLAP,
                              baseline=base)
    assert counting.windows < 0.6 * totals["window_evaluations"]
