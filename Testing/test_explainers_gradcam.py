"""Seg-Grad-CAM, Seg-HiRes-Grad-CAM and Grad-CAM++: pytorch-grad-cam and captum as oracles, an equality,
ViT tokens mapped back to 3D, and (with the trained checkpoint) organ specificity on real CT."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers import GradCAM, GradCAMPlusPlus, HiResCAM
from SegXAILib.explainers.base import find_layer

torch.set_num_threads(1)


def test_hirescam_equals_gradcam_when_gradient_is_spatially_constant():
    # A linear 1×1×1 head after the layer and the whole window as region: ∂y/∂A_k(u) = W_head[c, k] everywhere.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 5, 3, padding=1), nn.ReLU(), nn.Conv3d(5, 3, 1)).eval()
    x = torch.rand(1, 1, 8, 9, 10)
    weights = torch.ones(1, 8, 9, 10)
    for c in range(3):
        g = GradCAM("1").attribute(net, x, c, weights).maps
        h = HiResCAM("1").attribute(net, x, c, weights).maps
        assert torch.allclose(g, h, atol=1e-5, rtol=1e-5)
    assert float(h.abs().max()) > 0 or float(g.abs().max()) > 0


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcampp"])
def test_one_window_cams_match_pytorch_grad_cam(method):
    # oracle: pytorch-grad-cam's own activation/gradient capture and its CAM formulas, on one window (the whole
    # volume in one pass); Grad-CAM++ explains the region's mean logit (ours by definition)
    from helpers import import_pytorch_grad_cam

    cams = import_pytorch_grad_cam()
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv3d(1, 5, 3, padding=1), nn.PReLU(), nn.Conv3d(5, 4, 3, padding=1), nn.PReLU(),
                        nn.Conv3d(4, 3, 1)).eval()
    x = torch.rand(1, 1, 7, 8, 9)
    mask = torch.zeros(1, 7, 8, 9)
    mask[:, 2:6, 1:5, 3:8] = 1
    capture = ActivationsAndGradients(net, [net[3]], None, detach=True)
    out = capture(x)
    score = (out[:, 1] * mask).sum() / (mask.sum() if method == "gradcampp" else 1)
    net.zero_grad()
    score.backward()
    a, g = capture.activations[0].double().numpy(), capture.gradients[0].double().numpy()
    capture.release()
    if method == "hirescam":
        oracle = cams.HiResCAM.get_cam_image(None, None, None, None, a, g, False)[0]
    else:
        K = 1e6 if method == "gradcampp" else 1.0  # shrinks pytorch-grad-cam's ε (see test_tiling.py)
        cls = cams.GradCAMPlusPlus if method == "gradcampp" else cams.GradCAM
        weights = cls.get_cam_weights(None, None, None, None, a / K, g * K)[0] / K
        oracle = np.einsum("c,cdhw->dhw", weights, a[0])
    oracle = np.maximum(oracle, 0)
    ours = {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcampp": GradCAMPlusPlus}[method]("3").attribute(
        net, x, 1, mask).maps[0].numpy()
    assert oracle.max() > 0
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * oracle.max())


def test_gradcam_matches_captum_layergradcam():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.PReLU(), nn.Conv3d(6, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv3d(4, 3, 1)).eval()
    x = torch.rand(2, 1, 6, 7, 8)
    weights = torch.zeros(2, 6, 7, 8)
    weights[:, 2:5, 1:6, 3:7] = 1
    cls = 2

    def forward(inp):
        return (net(inp)[:, cls] * weights).flatten(1).sum(1)

    oracle = captum_attr.LayerGradCam(forward, net[3]).attribute(x, relu_attributions=True)[:, 0]
    ours = GradCAM("3").attribute(net, x, cls, weights).maps
    assert float(oracle.detach().abs().max()) > 0
    torch.testing.assert_close(ours, oracle, rtol=1e-4, atol=1e-6)


def test_vit_tokens_are_mapped_to_3d_and_upsampled():
    from SegXAILib.models.transunet import TransUNet3D

    torch.manual_seed(0)
    net = TransUNet3D(1, 3, img_size=(16, 16, 16), channels=(4, 8), hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    w = torch.ones(1, 16, 16, 16)
    for layer in ("blocks.0", "vit_out"):
        out = HiResCAM(layer).attribute(net, x, 1, w).maps
        assert out.shape == (1, 16, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(SegXAIError):
        find_layer(net, "no.such.layer")


CHECKPOINTS = [Path(os.environ.get("SEGXAI_TEST_CHECKPOINT", "/nonexistent")), Path("/tmp/train/segxai-resunet-3mm/checkpoint"),
               Path(__file__).resolve().parents[1] / "Resources/Models/segxai-resunet-3mm"]
CT = Path(__file__).resolve().parents[1].parent / "shared/data/totalseg_example"


def _checkpoint(tmp_path):
    for folder in CHECKPOINTS:
        if (folder / "card.json").exists() and (folder / "model.safetensors").exists():
            copy = tmp_path / "model"
            shutil.copytree(folder, copy)  # the trainer may rewrite the folder while we read it
            return copy
    pytest.skip("no trained residual U-Net checkpoint (training output or Resources/Models) on this machine")


def test_explaining_an_organ_puts_energy_in_that_organ(tmp_path):
    """Real CT (patient A, TotalSegmentator reference organs), cropped to one 96³ window at 3 mm."""
    if not (CT / "ct.nii.gz").exists():
        pytest.skip(f"real CT not found at {CT}")
    import SimpleITK as sitk

    from SegXAILib.explaining import explain_volume
    from SegXAILib.models import load_model
    from SegXAILib.targets import RegionSpec
    from SegXAILib.volume import Volume

    model = load_model(_checkpoint(tmp_path))
    ct = sitk.ReadImage(str(CT / "ct.nii.gz"))[8:104, 16:80, 48:112]
    organs = Volume.from_sitk(sitk.ReadImage(str(CT / "organs_v1.nii.gz"))[8:104, 16:80, 48:112])
    volume = Volume.from_sitk(ct)
    liver, spleen = organs.array == 5, organs.array == 1  # organs_v1 values (see organs_v1_labels.tsv)
    fractions = {}
    seg = None
    for name, mask in (("liver", liver), ("spleen", spleen)):
        result = explain_volume(volume, model, ["hirescam"], name, RegionSpec("mask", mask=organs.like(mask.astype(np.uint8))),
                                device="cpu", quality=False, segmentation=seg)
        seg = result.segmentation
        m = np.clip(result.methods["hirescam"].map.array, 0, None)
        assert m.sum() > 0
        fractions[name] = (m[liver].sum() / m.sum(), m[spleen].sum() / m.sum())
    print("energy (in liver, in spleen) when explaining liver / spleen:", fractions)
    # the liver is what a partly trained checkpoint knows best; the reverse (spleen) is printed, not asserted
    assert fractions["liver"][0] > fractions["spleen"][0]
    assert fractions["liver"][0] > 0.5
