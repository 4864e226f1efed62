"""SmoothGrad around any method.

Oracles: captum's ``NoiseTunnel(nt_type="smoothgrad")`` around captum's ``IntegratedGradients`` on the single-graph
blended function (MONAI's own ``sliding_window_inference``, every window in one batch), with captum's own noise
draws (``torch.manual_seed(seed)``, one sample per draw); the inner method itself for one noiseless sample.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers import GradCAM, IntegratedGradients
from SegXAILib.explainers.smoothgrad import SmoothGrad
from SegXAILib.explainers.tiling import explain_tiled

from helpers import bn_net

torch.set_num_threads(1)
captum_attr = pytest.importorskip("captum.attr")

# 7 < 8 along i: the volume is padded there, and the noise must stay out of the padding (MONAI pads inside)
PATCH, OVERLAP, SHAPE, CLASS = (8, 8, 8), 0.5, (14, 13, 7), 1




def problem():
    image = (np.random.default_rng(3).random(SHAPE) * 3.0 - 1.0).astype(np.float32)  # value range ≈ 3, not 1
    region = np.zeros(SHAPE, dtype=bool)
    region[2:9, 3:11, 1:6] = True
    return image, region, np.full(SHAPE, 0.2, dtype=np.float32)


def blended(net, region):
    from monai.inferers import sliding_window_inference

    mask = torch.from_numpy(region)

    def score(x):  # x: (N, 1, k, j, i); MONAI's blend of every window, in one graph
        y = sliding_window_inference(x, PATCH, 10_000, net, OVERLAP, mode="gaussian")
        return (y[:, CLASS] * mask).flatten(1).sum(1)

    return score


def test_smoothgrad_ig_equals_captum_noise_tunnel_with_the_same_draws():
    net, (image, region, base) = bn_net(), problem()
    sigma, samples, seed = 0.2, 3, 7
    ours, totals = explain_tiled(SmoothGrad(IntegratedGradients(steps=8), samples, sigma, seed), net, image, CLASS,
                                 region, PATCH, OVERLAP, baseline=base)
    stdev = sigma * float(image.max() - image.min())
    torch.manual_seed(seed)
    oracle = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(blended(net, region))).attribute(
        torch.from_numpy(image)[None, None], nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=1,
        stdevs=stdev, baselines=torch.from_numpy(base)[None, None], n_steps=8, method="gausslegendre")[0, 0].numpy()
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())
    clean, _ = explain_tiled(IntegratedGradients(steps=8), net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    assert np.abs(ours - clean).max() > 0.05 * np.abs(clean).max()  # the noise really changed the map
    assert totals["samples"] == samples and totals["noise_std"] == pytest.approx(stdev)


def test_captum_style_attribute_call_equals_captum_noise_tunnel():
    net, (image, region, base) = bn_net(), problem()
    cube = (slice(0, 12), slice(0, 12), slice(0, 6))  # one volume of even size (the net's strided conv halves it)
    x, b = torch.from_numpy(image[cube])[None, None], torch.from_numpy(base[cube])[None, None]
    weights = torch.from_numpy(region[cube])[None].float()
    result = SmoothGrad(IntegratedGradients(steps=4), 2, 0.1, 3).attribute(net, x, CLASS, weights, b)
    torch.manual_seed(3)
    oracle = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(
        lambda v: (net(v)[:, CLASS] * weights).flatten(1).sum(1))).attribute(
        x, nt_type="smoothgrad", nt_samples=2, nt_samples_batch_size=1, stdevs=0.1 * float(x.max() - x.min()),
        baselines=b, n_steps=4, method="gausslegendre")[0, 0].numpy()
    np.testing.assert_allclose(result.maps[0].numpy(), oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())


@pytest.mark.parametrize("inner", [lambda: IntegratedGradients(steps=4), lambda: GradCAM("4")])
def test_one_noiseless_sample_is_the_inner_method(inner):
    net, (image, region, base) = bn_net(), problem()
    alone, alone_totals = explain_tiled(inner(), net, image, CLASS, region, PATCH, OVERLAP, baseline=base)
    smoothed, totals = explain_tiled(SmoothGrad(inner(), samples=1, sigma=0.0), net, image, CLASS, region, PATCH, OVERLAP,
                                     baseline=base)
    assert np.abs(alone).max() > 0
    np.testing.assert_array_equal(smoothed, alone)
    assert totals["score"] == pytest.approx(alone_totals["score"])


def test_smoothgrad_mirrors_the_inner_methods_layer_precision_and_params():
    cam, ig = SmoothGrad(GradCAM("model.1")), SmoothGrad(IntegratedGradients(steps=4, baseline="zero"), 4, 0.1, 2)
    assert cam.uses_layer and cam.layer == "model.1" and cam.bf16 == GradCAM("x").bf16
    assert not ig.uses_layer and ig.bf16 == "opt-in"
    assert ig.params()["inner"] == "ig" and ig.params()["inner_params"]["baseline"] == "zero"
    assert (ig.params()["samples"], ig.params()["sigma"], ig.params()["seed"]) == (4, 0.1, 2)


@pytest.mark.parametrize("kwargs,needle", [({"samples": 0}, "at least 1 sample"), ({"sigma": -0.1}, "must be >= 0")])
def test_bad_options_are_one_line_errors(kwargs, needle):
    with pytest.raises(SegXAIError, match=needle):
        SmoothGrad(IntegratedGradients(), **kwargs)
    with pytest.raises(SegXAIError, match="needs an explainer"):
        SmoothGrad("ig")


def test_each_sample_reports_progress_under_its_own_stage_and_cancel_stops():
    from SegXAILib.inference import Cancelled, CancelToken

    net, (image, region, base) = bn_net(), problem()
    seen = []
    explain_tiled(SmoothGrad(IntegratedGradients(steps=2), samples=3), net, image, CLASS, region, PATCH, OVERLAP,
                  baseline=base, progress=lambda stage, f: seen.append(stage), stage="smoothgrad")
    assert sorted(set(seen)) == [f"smoothgrad: sample {n}/3" for n in (1, 2, 3)]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        explain_tiled(SmoothGrad(IntegratedGradients(steps=2), samples=3), net, image, CLASS, region, PATCH, OVERLAP,
                      baseline=base, cancel=token)


def test_smoothgrad_of_a_cam_is_the_mean_of_whole_volume_cams_of_the_same_noisy_images():
    """The CAM inner stays the whole-volume CAM (oracle-tested in test_tiling) of each noisy image; the draws are the
    ones the captum test above pins down."""
    net, (image, region, base) = bn_net(), problem()
    samples, sigma, seed = 2, 0.1, 5
    ours, _ = explain_tiled(SmoothGrad(GradCAM("4"), samples, sigma, seed), net, image, CLASS, region, PATCH, OVERLAP)
    generator, std = torch.Generator().manual_seed(seed), sigma * float(image.max() - image.min())
    maps = []
    for _ in range(samples):
        noisy = image + (torch.empty(SHAPE).normal_(0.0, 1.0, generator=generator) * std).numpy()
        maps.append(explain_tiled(GradCAM("4"), net, noisy, CLASS, region, PATCH, OVERLAP)[0])
    oracle = np.mean(maps, axis=0)
    assert np.abs(maps[0] - maps[1]).max() > 0.05 * oracle.max()
    np.testing.assert_allclose(ours, oracle, rtol=1e-5, atol=1e-6 * oracle.max())
