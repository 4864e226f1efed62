"""Whole-volume tiling: MONAI's window placement and blending, one window vs many, whole-volume completeness,
and every map back on the input's exact grid (oblique, anisotropic volume)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data.utils import dense_patch_slices
from torch import nn

from SegXAILib.explainers import make_explainer
from SegXAILib.explainers.ig import completeness_error
from SegXAILib.explainers.tiling import explain_tiled
from SegXAILib.inference import window_starts
from SegXAILib.inference import sliding_window_logits

from helpers import bn_net, import_pytorch_grad_cam

torch.set_num_threads(1)


@pytest.mark.parametrize("size,roi,overlap", [(20, 8, 0.5), (37, 16, 0.25), (16, 16, 0.5), (97, 96, 0.5), (9, 4, 0.6)])
def test_window_starts_match_monai(size, roi, overlap):
    interval = max(int(roi * (1 - overlap)), 1) if size != roi else roi
    monai = sorted({s[0].start for s in dense_patch_slices((size,), (roi,), (interval,))})
    assert window_starts(size, roi, overlap) == monai


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.PReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1)).eval()


@pytest.mark.parametrize("shape", [(20, 18, 21), (6, 7, 5)])
def test_explained_score_is_the_blended_sliding_window_output(shape):
    net = conv_net()
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    region = np.zeros(shape, dtype=bool)
    region[1:5, 2:6, 1:4] = True
    region[-4:, -5:, -3:] = True
    _, totals = explain_tiled(make_explainer("lrp"), net, image, 2, region, (8, 8, 8), 0.5)
    logits = sliding_window_logits(net, image, (8, 8, 8), 0.5, "cpu")
    expected = float(logits[2].numpy()[region].sum())
    assert totals["score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_whole_volume_ig_completeness_across_windows():
    net = conv_net()
    image = np.random.default_rng(2).random((20, 18, 21)).astype(np.float32)
    region = np.zeros(image.shape, dtype=bool)
    region[3:17, 2:15, 4:18] = True
    ig = make_explainer("ig", steps=32)
    out, totals = explain_tiled(ig, net, image, 1, region, (8, 8, 8), 0.5, baseline=np.zeros_like(image))
    err = completeness_error(totals)
    print("tiled IG completeness error (27+ windows):", err)
    # oracle: F(x) − F(x′) from two separate forward passes of the blended output, against the summed map
    delta = totals["score"] - totals["baseline_score"]
    assert abs(float(out.sum(dtype=np.float64)) - delta) < 0.01 * abs(delta)
    assert err < 0.01


# ---- the tiled map is the single-graph map of the blended function, for every method ---------------------
# Oracle: MONAI's own sliding_window_inference run with gradients on, every window in one batch, so the whole
# blended output F = Σ_M y_c is one autograd graph; channel weights from pytorch-grad-cam's own formulas on the
# layer of all windows; IG from captum on that graph; LRP's rules applied to that graph. A per-window ReLU or
# per-window channel weights (the old tiling) fail these by up to 73 % of the map's maximum.
PATCH, OVERLAP, SHAPE = (8, 8, 8), 0.5, (14, 13, 12)




def problem():
    image = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    region = np.zeros(SHAPE, dtype=bool)
    region[2:9, 3:11, 1:7] = True
    return image, region


def one_graph(net, image, layer=None):
    """(blended logits, every window's layer output stacked, window coordinates) from MONAI in one graph."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image)[None, None]
    captured, coords = [], []
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.append(o)) if layer else None

    def predictor(window, where):
        coords.extend(where)
        return net(window)

    try:
        logits = sliding_window_inference(x, PATCH, 10_000, predictor, OVERLAP, mode="gaussian", with_coord=True)
    finally:
        if handle is not None:
            handle.remove()
    return logits, (captured[0] if captured else None), coords


def blend_like_monai(window_maps, image):
    """MONAI's own Gaussian blend of given per-window maps (W, k, j, i), windows in MONAI's order."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image)[None, None]
    return sliding_window_inference(x, PATCH, 10_000, lambda w: window_maps[:, None], OVERLAP, mode="gaussian")[0, 0]


def sum_windows_at(window_maps, coords, shape):
    out = torch.zeros(shape, dtype=window_maps.dtype)
    for m, where in zip(window_maps, coords):
        out[tuple(where[2:])] += m
    return out


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcampp"])
def test_tiled_cam_equals_the_single_graph_cam(method):
    import torch.nn.functional as F

    cams = import_pytorch_grad_cam()
    net, (image, region), layer = bn_net(), problem(), "4"
    logits, act, coords = one_graph(net, image, layer)
    assert act.shape[0] > 8  # really many overlapping windows
    mask = torch.from_numpy(region)
    score = (logits[0, 1] * mask).sum()
    if method == "gradcampp":
        score = score / mask.sum()  # Grad-CAM++ explains the region's mean logit
    (grad,) = torch.autograd.grad(score, act)
    a, g = act.detach().double().numpy(), grad.double().numpy()
    W, C = a.shape[:2]
    whole_a = np.concatenate(list(a), axis=1)[None]  # the layer of all windows: (1, C, W·d, h, w)
    whole_g = np.concatenate(list(g), axis=1)[None]
    if method == "hirescam":
        per_window = cams.HiResCAM.get_cam_image(None, None, None, None, a, g, False)  # Σ_k g ⊙ A, per window
    else:
        if method == "gradcam":
            weights = cams.GradCAM.get_cam_weights(None, None, None, None, whole_a, whole_g)[0]  # (C,)
        else:
            # pytorch-grad-cam adds ε = 1e-6 to α's denominator, which dominates for a mean target's small
            # gradients; α is unchanged when A is divided and g multiplied by K (g² and ΣA·g³ both gain K²),
            # which shrinks that ε to ε/K², and the weights Σ α·ReLU(g) gain K
            K = 1e6
            weights = cams.GradCAMPlusPlus.get_cam_weights(None, None, None, None, whole_a / K, whole_g * K)[0] / K
        per_window = np.einsum("c,wcdhv->wdhv", weights, a)
    up = F.interpolate(torch.from_numpy(np.ascontiguousarray(per_window))[:, None].float(), size=PATCH, mode="trilinear",
                       align_corners=False)[:, 0]
    assembled = sum_windows_at(up, coords, SHAPE) if method == "hirescam" else blend_like_monai(up, image)
    oracle = torch.relu(assembled).numpy()
    ours, totals = explain_tiled(make_explainer(method, layer=layer), net, image, 1, region, PATCH, OVERLAP)
    assert oracle.max() > 0
    if method != "gradcampp":  # (Grad-CAM++'s weights of a post-ReLU layer are all positive: nothing to cut)
        assert (oracle == 0).any()  # the ReLU really cuts
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * oracle.max())
    assert totals["score"] == pytest.approx(float((logits[0, 1] * mask).sum().detach()), rel=1e-4)


def test_tiled_ig_equals_captum_on_the_single_graph():
    captum_attr = pytest.importorskip("captum.attr")
    net, (image, region) = bn_net(), problem()
    mask = torch.from_numpy(region)
    base = np.full(SHAPE, 0.2, dtype=np.float32)

    def blended(x):  # x: (N, 1, k, j, i); MONAI's blend of every window, in one graph
        from monai.inferers import sliding_window_inference

        y = sliding_window_inference(x, PATCH, 10_000, net, OVERLAP, mode="gaussian")
        return (y[:, 1] * mask).flatten(1).sum(1)

    x, b = torch.from_numpy(image)[None, None], torch.from_numpy(base)[None, None]
    oracle = captum_attr.IntegratedGradients(blended).attribute(x, b, n_steps=8, method="gausslegendre")[0, 0].numpy()
    ours, totals = explain_tiled(make_explainer("ig", steps=8), net, image, 1, region, PATCH, OVERLAP, baseline=base)
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())
    assert completeness_error(totals) < 0.05


def test_tiled_lrp_equals_lrp_of_the_single_graph():
    from SegXAILib.explainers.lrp import LRP

    net, (image, region) = bn_net(), problem()

    class Blended(nn.Module):  # the blended sliding-window output as one module, so LRP sees one graph
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(x, PATCH, 10_000, self.net, OVERLAP, mode="gaussian")

    x = torch.from_numpy(image)[None, None]
    oracle = LRP("epsilon").attribute(Blended(), x, 1, torch.from_numpy(region)[None].float()).maps[0].numpy()
    ours, _ = explain_tiled(LRP("epsilon"), net, image, 1, region, PATCH, OVERLAP)
    assert np.abs(oracle).max() > 0
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())


def test_tiled_cam_differs_from_per_window_cams():
    # the control for the oracle tests above: per-window weights and ReLUs (the old tiling) are measurably wrong
    net, (image, region) = bn_net(), problem()
    whole, _ = explain_tiled(make_explainer("hirescam", layer="4"), net, image, 1, region, PATCH, OVERLAP)
    from SegXAILib.explainers.tiling import Tiles

    tiles = Tiles(net, image, 1, region, PATCH, OVERLAP)
    old = np.zeros(tiles.shape, dtype=np.float32)
    for n in range(len(tiles)):
        if tiles.has_target(n):
            cam = make_explainer("hirescam", layer="4").attribute(net, tiles.tensor(tiles.image, n), 1, tiles.share(n))
            old[tiles.window(n)] += cam.maps[0].numpy()
    assert np.abs(tiles.crop(old) - whole).max() > 0.05 * whole.max()


def test_gradcampp_does_not_depend_on_the_scale_of_the_target():
    net, (image, region) = bn_net(), problem()
    x = torch.from_numpy(image[:8, :8, :8].copy())[None, None]
    w = torch.from_numpy(region[:8, :8, :8].astype(np.float32))[None]
    cam = make_explainer("gradcampp", layer="4")
    full, small = cam.attribute(net, x, 1, w).maps, cam.attribute(net, x, 1, w * 1e-3).maps
    assert full.max() > 0
    np.testing.assert_allclose(small.numpy(), full.numpy(), rtol=1e-4, atol=1e-6 * float(full.max()))
    gradcam = make_explainer("gradcam", layer="4")  # Grad-CAM is linear in the target: ×1e-3 scales the map
    np.testing.assert_allclose(gradcam.attribute(net, x, 1, w * 1e-3).maps.numpy(),
                               1e-3 * gradcam.attribute(net, x, 1, w).maps.numpy(), rtol=1e-3, atol=1e-9)


# ---- every map on the input's exact grid -------------------------------------------------------
def tiny_model(tmp_path: Path):
    """A tiny residual U-Net with a card (3 mm, patch 16³), saved and loaded as users' models are."""
    from SegXAILib.models import ClassInfo, ModelCard, build_network, load_model, save_model

    card = ModelCard(
        name="tiny", architecture="residual_unet",
        classes=[ClassInfo(0, "background"), ClassInfo.known(1, "liver"), ClassInfo.known(2, "right kidney")],
        spacing=[3.0, 3.0, 3.0], window=[-200.0, 300.0], patch=[16, 16, 16],
        arch_args={"channels": [4, 8], "strides": [2], "num_res_units": 1},
    )
    torch.manual_seed(0)
    save_model(build_network(card), card, tmp_path / "tiny")
    return load_model(tmp_path / "tiny")


def oblique_ct() -> "sitk.Image":
    """A synthetic CT with a rotated direction and anisotropic spacing (a bright blob in soft tissue)."""
    shape = (30, 26, 12)  # i, j, k
    z, y, x = np.mgrid[0:shape[2], 0:shape[1], 0:shape[0]]
    arr = np.full((shape[2], shape[1], shape[0]), -900.0, dtype=np.float32)
    arr[(x - 14) ** 2 / 100 + (y - 12) ** 2 / 64 + (z - 6) ** 2 / 16 < 1] = 60.0
    arr[(x - 18) ** 2 / 9 + (y - 10) ** 2 / 9 + (z - 6) ** 2 / 4 < 1] = 200.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.7, 2.3, 4.1))
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    image.SetDirection(rot.flatten().tolist())
    image.SetOrigin((12.0, -40.0, 7.5))
    return image


def test_every_map_has_the_input_geometry_on_an_oblique_volume(tmp_path):
    from SegXAILib.explaining import explain_volume
    from SegXAILib.volume import Volume

    model = tiny_model(tmp_path)
    volume = Volume.from_sitk(oblique_ct())
    assert not model.preprocessing(volume).is_identity  # the model grid really differs
    result = explain_volume(volume, model, ["gradcam", "hirescam", "gradcampp", "ig", "lrp"], "liver", "whole",
                            steps=4, device="cpu", quality=False)
    assert set(result.methods) == {"gradcam", "hirescam", "gradcampp", "ig", "lrp"}
    for name, m in result.methods.items():
        assert m.map.same_geometry(volume), name
        assert m.map.array.dtype == np.float32 and np.isfinite(m.map.array).all()
    assert result.segmentation.labels.same_geometry(volume)
    assert np.abs(result.methods["ig"].map.array).max() > 0


# ---- bf16 autocast (the CAMs' default where bf16 is fast; IG's on request) ---------------------------
def test_bf16_autocast_keeps_ig_complete_and_maps_close_to_fp32():
    # autocast runs on the CPU too, so the bf16 path the GPU takes by default is checked here
    net = conv_net()
    image = np.random.default_rng(2).random((20, 18, 21)).astype(np.float32)
    region = np.zeros(image.shape, dtype=bool)
    region[3:17, 2:15, 4:18] = True
    base = np.zeros_like(image)
    ig32, t32 = explain_tiled(make_explainer("ig", steps=16), net, image, 1, region, (8, 8, 8), 0.5, baseline=base)
    ig16, t16 = explain_tiled(make_explainer("ig", steps=16), net, image, 1, region, (8, 8, 8), 0.5, baseline=base,
                              precision="bf16")
    assert ig16.dtype == np.float32
    assert not np.array_equal(ig16, ig32)  # autocast really ran the convolutions in bf16
    print("IG completeness fp32 / bf16:", completeness_error(t32), completeness_error(t16))
    # F(x), F(x′) stay fp32, so the error measures bf16's cost: small on this net, 0.5-2.3 % on the bundled
    # models (BENCHMARKS.md), which is why IG is bf16 only on request
    assert completeness_error(t16) < 0.005
    assert np.corrcoef(ig16.ravel(), ig32.ravel())[0, 1] > 0.99
    cam32, _ = explain_tiled(make_explainer("hirescam", layer="3"), net, image, 1, region, (8, 8, 8), 0.5)
    cam16, _ = explain_tiled(make_explainer("hirescam", layer="3"), net, image, 1, region, (8, 8, 8), 0.5, precision="bf16")
    assert np.corrcoef(cam16.ravel(), cam32.ravel())[0, 1] > 0.98


def test_precision_resolution(monkeypatch):
    from SegXAILib.errors import SegXAIError
    from SegXAILib.explainers import tiling

    ig, lrp = make_explainer("ig"), make_explainer("lrp")
    from SegXAILib import inference

    monkeypatch.setattr(inference, "fast_bf16", lambda device: device.type == "cuda")  # a GPU box with an old CPU
    cam = make_explainer("gradcam", layer="1")
    assert tiling.resolve_precision("auto", torch.device("cpu"), cam) == "fp32"
    assert tiling.resolve_precision("auto", torch.device("cuda"), cam) == "bf16"
    assert tiling.resolve_precision("fp32", torch.device("cuda"), cam) == "fp32"
    assert tiling.resolve_precision("auto", torch.device("cuda"), ig) == "fp32"  # IG: bf16 only when asked for
    assert tiling.resolve_precision("bf16", torch.device("cuda"), ig) == "bf16"
    assert tiling.resolve_precision("bf16", torch.device("cuda"), lrp) == "fp32"  # LRP's rules need fp32
    with pytest.raises(SegXAIError, match="unknown precision"):
        tiling.resolve_precision("fp8", torch.device("cpu"), ig)


@pytest.mark.parametrize("flags,expected", [("fpu avx2 avx512f amx_bf16 amx_tile", True), ("fpu avx2 avx512_bf16", True),
                                            ("fpu avx2 avx512f avx512bw", False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, expected):
    import builtins

    from SegXAILib import inference

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    inference.cpu_has_native_bf16.cache_clear()  # read once per process; this test swaps the CPU
    try:
        assert inference.cpu_has_native_bf16() is expected
        assert inference.fast_bf16(torch.device("cpu")) is expected
    finally:
        monkeypatch.undo()
        inference.cpu_has_native_bf16.cache_clear()
