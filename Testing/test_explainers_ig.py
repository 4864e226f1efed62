"""Integrated Gradients: completeness, captum as oracle, baselines, alphas batched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers.ig import IntegratedGradients, completeness_error, gauss_legendre, make_baseline
from SegXAILib.models.unet import residual_unet
from SegXAILib.preprocessing import IntensityWindow

torch.set_num_threads(1)


def small_unet():
    """A tiny residual U-Net (skips, strided and transposed convs, PReLU) with batch norm in eval mode."""
    torch.manual_seed(0)
    net = residual_unet(1, 3, channels=(4, 8, 16), strides=(2, 2), norm="batch").eval()
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def region_weights(shape):
    w = torch.zeros(1, *shape)
    w[:, 3:11, 4:12, 2:10] = 1
    return w


def test_completeness_below_one_percent():
    net = small_unet()
    x = torch.rand(1, 1, 16, 16, 16)
    w = region_weights((16, 16, 16))
    result = IntegratedGradients(steps=64, alpha_batch=16).attribute(net, x, 1, w, torch.zeros_like(x))
    err = completeness_error(result.totals)
    print("IG completeness error, small U-Net, 64 steps:", err)
    assert abs(result.totals["score"] - result.totals["baseline_score"]) > 1e-3
    assert err < 0.01


def test_alpha_batching_does_not_change_the_result():
    net = small_unet()
    x = torch.rand(1, 1, 16, 16, 16)
    w = region_weights((16, 16, 16))
    a = IntegratedGradients(steps=8, alpha_batch=1).attribute(net, x, 2, w).maps
    b = IntegratedGradients(steps=8, alpha_batch=8).attribute(net, x, 2, w).maps
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_matches_captum_integrated_gradients():
    captum_attr = pytest.importorskip("captum.attr")
    net = small_unet()
    x = torch.rand(2, 1, 16, 16, 16)
    base = torch.full_like(x, 0.2)
    w = region_weights((16, 16, 16)).repeat(2, 1, 1, 1)
    cls = 1

    def forward_batch(inp):  # captum stacks alphas along the batch: repeat the weights to match
        reps = inp.shape[0] // w.shape[0]
        return (net(inp)[:, cls] * w.repeat(reps, 1, 1, 1)).flatten(1).sum(1)

    oracle = captum_attr.IntegratedGradients(forward_batch).attribute(x, base, n_steps=16, method="gausslegendre")[:, 0]
    ours = IntegratedGradients(steps=16, alpha_batch=5).attribute(net, x, cls, w, base).maps
    assert float(oracle.abs().max()) > 0
    torch.testing.assert_close(ours, oracle.detach(), rtol=1e-3, atol=1e-5 * float(oracle.abs().max()))


def test_gauss_legendre_integrates_polynomials():
    alphas, weights = gauss_legendre(5)
    assert np.isclose(weights.sum(), 1.0)
    assert np.isclose((weights * alphas**7).sum(), 1 / 8)


def test_baselines():
    window = IntensityWindow(-200, 300)
    image = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    assert np.all(make_baseline(image, "air", window) == 0.0)  # −1000 HU is below the window
    assert np.all(make_baseline(image, "air", IntensityWindow(-1100, 900)) == pytest.approx(0.05))
    assert np.all(make_baseline(image, "zero") == 0)
    blur = make_baseline(image, "blur")
    assert blur.shape == image.shape and blur.std() < image.std()
    with pytest.raises(SegXAIError):
        make_baseline(image, "noise")
    with pytest.raises(SegXAIError):
        IntegratedGradients(steps=0)


def test_completeness_on_real_ct_with_the_checkpoint(tmp_path):
    """Trained residual U-Net on a one-window crop of patient A; blur baseline (see ig.py on constant ones)."""
    from test_explainers_gradcam import CT, _checkpoint

    if not (CT / "ct.nii.gz").exists():
        pytest.skip(f"real CT not found at {CT}")
    import SimpleITK as sitk

    from SegXAILib.explaining import explain_volume
    from SegXAILib.models import load_model
    from SegXAILib.volume import Volume

    model = load_model(_checkpoint(tmp_path))
    volume = Volume.from_sitk(sitk.ReadImage(str(CT / "ct.nii.gz"))[8:104, 16:80, 48:112])
    result = explain_volume(volume, model, ["ig"], "liver", "point:70,180,393:40", steps=32, baseline="blur",
                            device="cpu", quality=False)
    checks = result.methods["ig"].checks
    print("IG completeness error, trained U-Net, real CT, blur baseline, 32 steps:", checks)
    assert result.target.voxels > 0
    assert checks["completeness_error"] < 0.01
