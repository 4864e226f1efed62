"""What a user sees: SegXAI's scene drawn by Slicer's own slice and 3D views (trame-slicer, offscreen).

The oracle is the picture itself: the CT rendered alone by the same views, and each pixel's voxel found through
the slice node's own XY->RAS matrix (Slicer's geometry, not ours). Issue 15, finding 6 (signed maps veiled the
whole CT) and the display gaps (outlines, legend, 3D). The display decisions without a renderer come first.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from SegXAILib import display as look
from SegXAILib.models.card import ClassInfo
from SegXAILib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [ClassInfo(0, "background"), ClassInfo.known(1, "liver"), ClassInfo.known(2, "spleen")]


# ---- display decisions (no renderer) --------------------------------------------------------------
def test_signed_colour_table_is_clear_around_zero_and_opaque_elsewhere():
    """Slicer draws any non-zero colour alpha fully (rendered below), so alphas must be exactly 0 or 1."""
    rgba = look.colormap_rgba("diverging", 256, clear_band=0.1)
    lo, hi = np.arange(256) / 256, np.arange(1, 257) / 256
    inside = (lo >= 0.45) & (hi <= 0.55)
    outside = (hi <= 0.45) | (lo >= 0.55)
    assert inside.sum() >= 20 and (rgba[inside, 3] == 0).all() and (rgba[outside, 3] == 1).all()
    assert set(np.unique(rgba[:, 3])) <= {0.0, 1.0}
    assert rgba[0, 2] > 0.9 and rgba[0, 0] < 0.1 and rgba[-1, 0] > 0.9 and rgba[-1, 2] < 0.1  # cold low, hot high
    assert (look.colormap_rgba("inferno")[:, 3] == 1).all()


def test_map_style_for_signed_and_non_negative_maps():
    rng = np.random.default_rng(0)
    cam = rng.random((4, 8, 8))
    cam_style = look.map_style(cam, "gradcam", target_class="liver")
    top = float(np.percentile(cam[cam > 0], 99.5))
    assert cam_style.colormap == "inferno" and not cam_style.signed
    assert cam_style.window[1] == pytest.approx(top) and cam_style.threshold[0] == pytest.approx(0.1 * top)
    assert cam_style.hidden(0.05 * top) and not cam_style.hidden(0.5 * top)
    ig = rng.normal(0, 1, (4, 8, 8))
    ig_style = look.map_style(ig, "ig", target_class="liver")
    itop = float(np.percentile(np.abs(ig), 99.5))
    assert ig_style.signed and ig_style.colormap == "diverging" and ig_style.threshold is None
    assert ig_style.window == pytest.approx((-itop, itop))
    assert ig_style.hidden(0.05 * itop) and ig_style.hidden(-0.05 * itop)
    assert not ig_style.hidden(0.5 * itop) and not ig_style.hidden(-0.5 * itop)


def test_legend_text_names_method_class_unit_region_and_layer():
    assert look.legend_title("gradcampp", "liver") == "Grad-CAM++: liver"
    assert look.legend_title("ig") == "Integrated Gradients"
    sub = look.legend_subtitle("gradcam", "point:1,2,3:10", "model.2")
    assert "activation" in sub and "region point:1,2,3:10" in sub and "layer model.2" in sub
    sub = look.legend_subtitle("lrp", "predicted", "model.2")  # LRP and IG explain the input: no layer to name
    assert "target-score units" in sub and "layer" not in sub
    text = look.description("ig", "liver", "predicted", None, "segxai-transunet-3mm", scale="family")
    assert "Integrated Gradients" in text and "'liver'" in text and "segxai-transunet-3mm" in text and "negative" in text
    assert look.legend_title("mymethod", "liver") == "mymethod: liver"  # unknown methods keep their name
    assert look.legend_title("occlusion", "liver") == "Occlusion: liver"


def test_common_windows_per_family_and_per_map():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 8, 8)), 5 * rng.random((4, 8, 8))
    ig, lrp = rng.normal(0, 1, (4, 8, 8)), rng.normal(0, 10, (4, 8, 8))
    maps = [("gc", "gradcam", a, False), ("pp", "gradcampp", b, False), ("ig", "ig", ig, True), ("lrp", "lrp", lrp, True)]
    fam = look.common_windows(maps, "family")
    assert fam["gc"] == fam["pp"] and fam["gc"][1] == pytest.approx(np.percentile(b, 99.5))
    assert fam["ig"][1] == pytest.approx(np.percentile(np.abs(ig), 99.5))  # IG is not drowned by LRP's range
    own = look.common_windows(maps, "map")
    assert own["gc"][1] == pytest.approx(np.percentile(a, 99.5)) and own["pp"][1] == fam["pp"][1]
    with pytest.raises(ValueError):
        look.common_windows(maps, "global")


def test_shown_classes_follow_the_card_measurements():
    classes = [ClassInfo(0, "background"), ClassInfo(1, "liver"), ClassInfo(2, "spleen"), ClassInfo(3, "cyst")]
    metrics = {"training_cases_not_a_test": {"a": {"liver": {"dice": 0.9}, "spleen": {"dice": 0.0},
                                                   "liver+cyst": {"dice": 0.8}}},
               "crossval": {"folds": [{"results": {"b": {"spleen": {"dice": 0.0}}}}]}}
    assert [c.name for c in look.shown_classes(classes, metrics)] == ["liver"]  # merged key says nothing of cyst
    assert look.hidden_classes(classes, metrics) == ["spleen", "cyst"]
    metrics["crossval"]["folds"][0]["results"]["b"]["spleen"]["dice"] = 0.2
    assert [c.name for c in look.shown_classes(classes, metrics)] == ["liver", "spleen"]
    assert [c.name for c in look.shown_classes(classes, None)] == ["liver", "spleen", "cyst"]


def test_card_metrics_read_from_the_bundled_cards_without_torch(tmp_path):
    import subprocess
    import sys

    cards = sorted((ROOT / "Resources" / "Models").glob("*/card.json"))
    if not cards:
        pytest.skip("no bundled model card")
    code = ("import sys; sys.modules['torch'] = None; from SegXAILib.display import card_metrics; "
            f"m = card_metrics({str(cards[0])!r}); assert 'training_cases_not_a_test' in m, list(m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    (tmp_path / "bad.json").write_text("{not json")
    assert look.card_metrics(tmp_path / "bad.json") == {} and look.card_metrics(tmp_path / "none.json") == {}


# ---- the rendered scene -----------------------------------------------------------------------------
BOX_A = (slice(None), slice(22, 38), slice(18, 34))   # large map values, inside the liver
BOX_B = (slice(None), slice(4, 12), slice(54, 66))    # negative IG, outside every segment (away from the legend)
from helpers import RINGED_LIVER as LIVER, RINGED_SPLEEN as SPLEEN  # noqa: E402


def synthetic_case():
    """A CT with structure (rings and noise, so a veil or a tint cannot hide), labels and two maps."""
    from helpers import ringed_ct

    ct, labels, rng = ringed_ct()
    grad = np.full(ct.shape, 0.02, np.float32)  # faint everywhere: must not show
    grad[BOX_A] = 1.0
    ig = rng.normal(0, 0.01, ct.shape).astype(np.float32)  # near zero everywhere: must not veil
    ig[BOX_A] = 1.0
    ig[BOX_B] = -1.0
    maps = [("gradcam", ct.like(grad), {"method": "gradcam", "layer": "model.2"}, False),
            ("ig", ct.like(ig), {"method": "ig", "steps": 8}, True)]
    return ct, ct.like(labels), maps


def artefacts_dir(tmp_path_factory) -> Path:
    """Where the rendered PNGs go: $SEGXAI_RENDER_ARTEFACTS when set (CI keeps them), else a pytest tmp dir."""
    chosen = os.environ.get("SEGXAI_RENDER_ARTEFACTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("render")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The synthetic case through show_results, saved as .mrml, loaded into trame-slicer and drawn."""
    pytest.importorskip("slicer")
    from render_views import Renderer, require_renderer, save_png, side_by_side

    require_renderer()
    from SegXAILib import scene as bridge

    ct, labels, maps = synthetic_case()
    bridge.new_headless_scene()
    node = bridge.add_volume_node(ct, "CT")
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(-160.0, 240.0)
    bridge.show_results(node, labels, CLASSES, maps, {"model": "segxai-test", "target_class": "liver",
                                                        "region": "predicted"}, show_3d=True)
    folder = tmp_path_factory.mktemp("scene")
    mrml = bridge.save_scene(folder / "case.mrml")

    r = Renderer((160, 160))
    r.slice_view("Axial")
    r.threed_view()
    r.load(mrml)
    scene = r.scene
    ct_node = scene.GetFirstNodeByName("CT")
    map_nodes = {m.GetAttribute("SegXAI.Method"): m for m in bridge.segxai_nodes(scene, ct_node, role="map")}
    seg = bridge.segxai_nodes(scene, ct_node, role="segmentation")[0]
    legends = {k: bridge.legend_of(m) for k, m in map_nodes.items()}

    def draw(map_key=None, segments=False, legend=False):
        bridge.show_overlay(ct_node, map_nodes.get(map_key), bridge.DEFAULT_OPACITY, scene)
        for key, lg in legends.items():
            lg.SetVisibility(legend and key == map_key)
        seg.GetDisplayNode().SetVisibility(segments)
        seg.GetDisplayNode().SetVisibility3D(segments)
        return r.render_slice("Axial")

    pics = {"ct": draw(), "gradcam": draw("gradcam"), "ig": draw("ig"), "outlines": draw(None, True),
            "gradcam+outlines": draw("gradcam", True), "gradcam+legend": draw("gradcam", legend=True),
            "ig+legend": draw("ig", legend=True)}
    voxel = pixel_voxels(r.slice_view("Axial"), ct.ijk_to_ras, pics["ct"].shape)
    seg.GetDisplayNode().SetVisibility(False)
    pics["3d-empty"] = r.render_3d()
    seg.GetDisplayNode().SetVisibility(True)
    seg.GetDisplayNode().SetVisibility3D(True)
    pics["3d"] = r.render_3d()
    out = artefacts_dir(tmp_path_factory)
    for name, pixels in pics.items():
        save_png(pixels, out / f"render_{name.replace('+', '_')}.png")
    save_png(side_by_side(pics["ct"], pics["gradcam+legend"], pics["ig+legend"], pics["gradcam+outlines"], pics["3d"]),
             out / "render_synthetic_overview.png")
    return {"pics": pics, "voxel": voxel, "shape": ct.shape, "seg": seg, "map_nodes": map_nodes, "out": out,
            "draw": draw, "scene": scene}


def pixel_voxels(view, ijk_to_ras, picture_shape) -> np.ndarray:
    """(H, W, 3) continuous (k, j, i) voxel of every pixel, through the slice node's XY->RAS matrix."""
    import vtk

    h, w = picture_shape[:2]
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(view._view_node.GetXYToRAS())
    xy_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    rows, cols = np.mgrid[0:h, 0:w]
    xy = np.stack([cols + 0.5, (h - 1 - rows) + 0.5, np.zeros_like(rows), np.ones_like(rows)], axis=-1).astype(float)
    ijk = np.einsum("ab,hwb->hwa", np.linalg.inv(ijk_to_ras) @ xy_to_ras, xy)
    return ijk[..., [2, 1, 0]]


def in_box(voxel, box, margin: float) -> np.ndarray:
    """Pixels whose voxel lies inside the (j, i) box shrunk by ``margin`` voxels (negative: grown)."""
    k, j, i = voxel[..., 0], voxel[..., 1], voxel[..., 2]
    (js, is_) = box[1], box[2]
    return ((j >= js.start - 0.5 + margin) & (j <= js.stop - 0.5 - margin)
            & (i >= is_.start - 0.5 + margin) & (i <= is_.stop - 0.5 - margin))


def on_volume(voxel, shape, margin: float = 1.0) -> np.ndarray:
    return ((voxel[..., 1] >= margin) & (voxel[..., 1] <= shape[1] - 1 - margin)
            & (voxel[..., 2] >= margin) & (voxel[..., 2] <= shape[2] - 1 - margin))


def diff(a, b) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=-1)


def test_the_view_shows_the_ct(rendered):
    ct = rendered["pics"]["ct"]
    assert on_volume(rendered["voxel"], rendered["shape"]).mean() > 0.8  # the slice fills the view
    assert ct.std() > 20 and (ct[..., 0] == ct[..., 2]).all()  # grey CT with its structure


def test_non_negative_map_shows_where_large_and_nowhere_else(rendered):
    pics, voxel = rendered["pics"], rendered["voxel"]
    d = diff(pics["gradcam"], pics["ct"])
    outside = ~in_box(voxel, BOX_A, -1.5)
    inside = in_box(voxel, BOX_A, 1.5)
    assert d[outside].max() <= 1, "faint Grad-CAM values tint the CT"
    assert d[inside].mean() > 25
    rgb = pics["gradcam"][inside].astype(int)
    assert (rgb[:, 0] - rgb[:, 2]).mean() > 25  # inferno's top: warm, not grey


def test_signed_map_leaves_the_ct_unveiled(rendered):
    """Finding 6: near-zero IG voxels were drawn opaque white over the whole CT (mean RGB 46 -> 105)."""
    pics, voxel = rendered["pics"], rendered["voxel"]
    d = diff(pics["ig"], pics["ct"])
    outside = ~in_box(voxel, BOX_A, -1.5) & ~in_box(voxel, BOX_B, -1.5)
    assert d[outside].max() <= 1, f"IG veils the CT: {np.mean(d[outside] > 1):.0%} of its pixels changed"
    pos = pics["ig"][in_box(voxel, BOX_A, 1.5)].astype(int)
    neg = pics["ig"][in_box(voxel, BOX_B, 1.5)].astype(int)
    assert (pos[:, 0] - pos[:, 2]).mean() > 40 and (neg[:, 2] - neg[:, 0]).mean() > 40  # red-yellow / blue-cyan
    assert abs(pics["ig"][outside].mean() - pics["ct"][outside].mean()) < 0.5


def test_slicer_draws_any_non_zero_colour_alpha_fully(rendered):
    """Why display.py makes alphas 0 or 1: a table at alpha 0.3 draws exactly like the same table at 1."""
    pics, scene = rendered["pics"], rendered["scene"]
    display = rendered["map_nodes"]["ig"].GetDisplayNode()
    original = display.GetColorNodeID()
    faded = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "faded copy")
    faded.Copy(display.GetColorNode())
    for i in range(faded.GetNumberOfColors()):
        r, g, b, a = faded.GetLookupTable().GetTableValue(i)
        faded.SetColor(i, r, g, b, 0.3 if a > 0 else 0.0)
    try:
        display.SetAndObserveColorNodeID(faded.GetID())
        assert diff(rendered["draw"]("ig"), pics["ig"]).max() <= 1
        for i in range(faded.GetNumberOfColors()):  # the swapped table is the one drawn: all clear, CT alone
            faded.SetColor(i, *faded.GetLookupTable().GetTableValue(i)[:3], 0.0)
        assert diff(rendered["draw"]("ig"), pics["ct"]).max() <= 1
    finally:
        display.SetAndObserveColorNodeID(original)
        scene.RemoveNode(faded)


def test_segments_are_outlines_that_do_not_tint(rendered):
    pics, voxel = rendered["pics"], rendered["voxel"]
    d = diff(pics["outlines"], pics["ct"])
    ring = in_box(voxel, LIVER, 0.0) & ~in_box(voxel, LIVER, 1.0)  # Slicer draws the outline on the edge voxels
    interior = in_box(voxel, LIVER, 2.0)
    far = ~in_box(voxel, LIVER, -2.0) & ~in_box(voxel, SPLEEN, -2.0)
    assert (d[ring] > 10).mean() > 0.6, "the liver's boundary is not drawn"
    assert d[interior].max() <= 1 and d[far].max() <= 1, "segments fill or tint"
    liver = np.array(CLASSES[1].color)
    drawn = pics["outlines"][ring & (d > 10)].astype(int)
    hue = drawn - drawn.mean(axis=1, keepdims=True)
    assert np.corrcoef(hue.mean(axis=0), liver - liver.mean())[0, 1] > 0.9  # in the liver's colour
    # over a map: inside the liver the map's pixels are exactly those without the segments
    inside_map = in_box(voxel, BOX_A, 1.5)
    assert diff(pics["gradcam+outlines"], pics["gradcam"])[inside_map].max() <= 1


def test_legend_drawn_for_the_shown_map_with_its_colours(rendered):
    pics = rendered["pics"]
    h, w = pics["ct"].shape[:2]
    strip = (slice(int(0.2 * h), int(0.8 * h)), slice(int(0.8 * w), w))
    assert (diff(pics["gradcam"], pics["ct"])[strip] <= 1).all()  # nothing there without the legend
    for key, warm, cold in (("gradcam+legend", True, False), ("ig+legend", True, True)):
        region = pics[key][strip].reshape(-1, 3).astype(int)
        changed = diff(pics[key], pics["ct"])[strip].ravel() > 30
        assert changed.mean() > 0.03, f"{key}: no legend"
        colours = region[changed]
        assert ((colours[:, 0] - colours[:, 2]) > 80).any() == warm
        assert ((colours[:, 2] - colours[:, 0]) > 80).any() == cold
    from SegXAILib import scene as bridge

    text = bridge.legend_of(rendered["map_nodes"]["ig"]).GetTitleText()  # the words, which pixels cannot read
    assert text.startswith("Integrated Gradients: liver") and "target-score units" in text


def test_3d_view_shows_the_segment_surfaces(rendered):
    pics = rendered["pics"]
    changed = diff(pics["3d"], pics["3d-empty"]) > 20
    assert changed.mean() > 0.02, "Show 3D draws nothing"
    drawn = pics["3d"][changed].astype(float)
    hue = drawn / np.maximum(drawn.sum(axis=1, keepdims=True), 1.0)
    share = {}
    for c in CLASSES[1:]:  # shaded surfaces keep their colour's proportions
        ref = np.array(c.color, float) / sum(c.color)
        share[c.name] = float((np.abs(hue - ref).max(axis=1) < 0.04).mean())
    assert share["liver"] > 0.2 and share["spleen"] > 0.2, share


def test_rendered_pictures_are_saved(rendered):
    names = {p.name for p in rendered["out"].glob("render_*.png")}
    assert {"render_ct.png", "render_ig.png", "render_gradcam_outlines.png", "render_3d.png"} <= names


# ---- the bundled sample through `segxai scene` ------------------------------------------------------
def _drawn_threshold(display):
    """From Slicer's own display node: below which |value| a map is not drawn (threshold or clear colour band)."""
    if display.GetApplyThreshold():
        return display.GetLowerThreshold()
    table = display.GetColorNode().GetLookupTable()
    n = table.GetNumberOfTableValues()
    clear = [i for i in range(n) if table.GetTableValue(i)[3] == 0]
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    return low + (max(clear) + 1) / n * (high - low)  # upper edge of the clear band (the window is symmetric)


def _neighbourhood(values, voxel):
    """Min and max of the raw values over the 2x2x2 voxels an interpolated pixel reads."""
    idx = np.floor(voxel).astype(int)
    reads = []
    for dk in (0, 1):
        for dj in (0, 1):
            for di in (0, 1):
                k = np.clip(idx[..., 0] + dk, 0, values.shape[0] - 1)
                j = np.clip(idx[..., 1] + dj, 0, values.shape[1] - 1)
                i = np.clip(idx[..., 2] + di, 0, values.shape[2] - 1)
                reads.append(values[k, j, i])
    return np.min(reads, axis=0), np.max(reads, axis=0)


@pytest.mark.slow
def test_segxai_scene_of_the_sample_renders_without_veil(tmp_path, tmp_path_factory):
    """The real thing: `segxai scene` on the bundled CT and model, the liver's middle slice drawn by Slicer.
    Where a map is below what its display node draws, the picture equals the one without the map; where it
    is well above, the map is drawn."""
    pytest.importorskip("slicer")
    from render_views import Renderer, require_renderer, save_png, side_by_side

    require_renderer()
    import slicer.util
    from render_docs import liver_offset

    from SegXAILib import cli
    from SegXAILib import scene as bridge

    sample = ROOT / "Resources" / "Samples" / "ct_totalseg_A.nii.gz"
    if not sample.exists() or not list((ROOT / "Resources" / "Models").glob("*/card.json")):
        pytest.skip("no bundled sample or model")
    out = tmp_path / "scene"
    assert cli.main(["scene", str(sample), "-o", str(out), "--methods", "gradcam", "ig", "--steps", "2",
                     "--device", "cpu"]) == 0
    r = Renderer((200, 200))
    r.slice_view("Axial")
    r.load(out / "ct_totalseg_A.mrml")
    maps = {m.GetAttribute("SegXAI.Method"): m for m in bridge.segxai_nodes(r.scene, None, role="map")}
    ct_node = r.scene.GetFirstNodeByName("ct_totalseg_A")
    seg = bridge.segxai_nodes(r.scene, ct_node, role="segmentation")[0]
    offset = liver_offset(r, seg, ct_node)

    def draw(node):
        bridge.show_overlay(ct_node, node, bridge.DEFAULT_OPACITY, r.scene)
        for m in maps.values():
            bridge.legend_of(m).SetVisibility(False)
        return r.render_slice("Axial", offset)

    base = draw(None)  # CT and outlines
    voxel = pixel_voxels(r.slice_view("Axial"), bridge.ijk_to_ras(ct_node), base.shape)
    inside = on_volume(voxel, np.array(slicer.util.arrayFromVolume(ct_node)).shape)
    keep = artefacts_dir(tmp_path_factory)
    pictures = [base]
    for method in ("gradcam", "ig"):
        picture = draw(maps[method])
        pictures.append(picture)
        values = np.array(slicer.util.arrayFromVolume(maps[method]), dtype=np.float64)
        edge = _drawn_threshold(maps[method].GetDisplayNode())
        low, high = _neighbourhood(values, voxel)
        quiet = inside & (np.maximum(np.abs(low), np.abs(high)) < 0.9 * edge)
        loud = inside & ((low > 1.5 * edge) | (high < -1.5 * edge))  # all eight reads strong, of one sign
        d = diff(picture, base)
        assert quiet.mean() > 0.1, f"{method}: the check covers too little of the slice"
        assert d[quiet].max() <= 1, f"{method} tints {np.mean(d[quiet] > 1):.0%} of the pixels it should leave alone"
        if loud.any():
            assert (d[loud] > 3).mean() > 0.8, f"{method} is not drawn where it is large"
    save_png(side_by_side(*pictures), keep / "render_sample_ct_gradcam_ig.png")
