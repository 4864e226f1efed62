"""The Slicer scene bridge under slicer-core: segments with codes, colour-mapped maps on the exact grid,
overlay in every slice view, provenance, replacing only SegXAI's own nodes, and a .mrml round trip."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from SegXAILib import __version__
from SegXAILib.errors import SegXAIError
from SegXAILib.models.card import ClassInfo
from SegXAILib.volume import Volume

CLASSES = [ClassInfo(0, "background"), ClassInfo.known(1, "liver"), ClassInfo.known(2, "spleen")]


def test_import_without_slicer():
    """``import SegXAILib.scene`` must work where slicer and vtk are not installed."""
    code = "import sys; sys.modules['slicer'] = None; sys.modules['vtk'] = None; import SegXAILib.scene"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_display_range_robust_window_and_threshold():
    from SegXAILib.scene import display_range

    values = np.zeros((10, 10, 10), np.float32)
    values[0, 0, :3] = 1000.0  # a few outliers must not set the window
    values[1:] = np.linspace(0.0, 1.0, 900).reshape(9, 10, 10)
    rng = display_range(values, signed=False)
    assert 0.9 < rng["window_max"] < 1.0 + 1e-6 and 0 <= rng["window_min"] < 0.05
    assert 0 < rng["threshold"] < rng["window_max"]
    signed = display_range(np.linspace(-2, 1, 1000).reshape(10, 10, 10), signed=True)
    assert signed["window_min"] == pytest.approx(-signed["window_max"]) and signed["window_max"] > 1.5
    assert display_range(np.zeros((2, 2, 2)), signed=False)["window_max"] == 1.0


# ---- with slicer-core ---------------------------------------------------------------------------
@pytest.fixture()
def S():
    pytest.importorskip("slicer")
    pytest.importorskip("vtk")
    from SegXAILib import scene

    scene.new_headless_scene()
    return scene


def oblique_ct() -> Volume:
    """A small CT-like volume with a rotated, anisotropic, shifted grid."""
    a, b = np.pi / 7, np.pi / 11
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx @ np.diag([0.8, 0.9, 2.5])
    m[:3, 3] = [12.5, -40.0, 7.0]
    rng = np.random.default_rng(0)
    return Volume(rng.normal(40, 30, (12, 18, 22)).astype(np.int16), m)


def results(ct: Volume):
    labels = np.zeros(ct.shape, np.uint8)
    labels[3:9, 4:12, 5:15] = 1
    labels[2:5, 13:16, 15:20] = 2
    rng = np.random.default_rng(1)
    grad = np.where(labels == 1, rng.random(ct.shape), 0.01 * rng.random(ct.shape)).astype(np.float32)
    ig = rng.normal(0, 1, ct.shape).astype(np.float32)
    maps = [
        ("gradcam", ct.like(grad), {"method": "gradcam", "layer": "model.2", "target_class": "liver", "region": "predicted"}, False),
        ("ig", ct.like(ig), {"method": "ig", "steps": 16, "target_class": "liver", "region": "predicted"}, True),
    ]
    return ct.like(labels), maps


def run(S, ct_node, ct):
    labels, maps = results(ct)
    return S.show_results(ct_node, labels, CLASSES, maps, {"model": "segxai-test"})


def test_segments_maps_overlay_and_provenance(S):
    import slicer

    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    out = run(S, node, ct)
    scene = slicer.mrmlScene

    seg = out["segmentation"]
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    liver = segmentation.GetNthSegment(0)
    assert liver.GetName() == "liver" and S.segment_snomed_code(liver) == "10200004"
    assert np.allclose(liver.GetColor(), [c / 255 for c in CLASSES[1].color], atol=1e-6)
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()).GetID() == node.GetID()
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetNthSegmentID(0), node)
    assert mask.shape == ct.shape and int(mask.sum()) == int((results(ct)[0].array == 1).sum())
    assert seg.GetAttribute("SegXAI.Role") == "segmentation" and seg.GetAttribute("SegXAI.Version") == __version__

    grad, ig = out["maps"]
    for m in (grad, ig):  # exact grid of the oblique input
        assert np.allclose(S.ijk_to_ras(m), S.ijk_to_ras(node), atol=1e-9)
        assert m.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
        assert np.allclose(S.ijk_to_ras(m), ct.ijk_to_ras, atol=1e-6)
    assert np.allclose(slicer.util.arrayFromVolume(grad), results(ct)[1][0][1].array)

    d = grad.GetDisplayNode()
    assert "Inferno" in d.GetColorNode().GetName() and not d.GetAutoWindowLevel()
    assert d.GetApplyThreshold() and 0 < d.GetLowerThreshold() < d.GetWindowLevelMax()
    di = ig.GetDisplayNode()
    assert "Diverging" in di.GetColorNode().GetName()
    assert di.GetWindowLevelMin() == pytest.approx(-di.GetWindowLevelMax())

    assert S.legend_of(grad) is not None and S.legend_of(grad).GetVisibility()
    assert S.legend_of(ig) is not None and not S.legend_of(ig).GetVisibility()
    vr = [grad.GetNthDisplayNode(k) for k in range(grad.GetNumberOfDisplayNodes())]
    vr = [n for n in vr if n.IsA("vtkMRMLVolumeRenderingDisplayNode")]
    assert vr and not vr[0].GetVisibility()

    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert len(composites) >= 3
    for c in composites:
        assert c.GetBackgroundVolumeID() == node.GetID() and c.GetForegroundVolumeID() == grad.GetID()
        assert c.GetForegroundOpacity() == pytest.approx(0.4)

    assert grad.GetAttribute("SegXAI.Method") == "gradcam" and grad.GetAttribute("SegXAI.Layer") == "model.2"
    assert grad.GetAttribute("SegXAI.TargetClass") == "liver" and grad.GetAttribute("SegXAI.Region") == "predicted"
    assert grad.GetAttribute("SegXAI.Model") == "segxai-test" and ig.GetAttribute("SegXAI.Steps") == "16"
    assert ig.GetAttribute("SegXAI.Version") == __version__

    S.show_overlay(node, ig, 0.7)
    assert composites[0].GetForegroundVolumeID() == ig.GetID() and S.legend_of(ig).GetVisibility()
    S.set_overlay_opacity(0.2)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.2) for c in composites)


def test_second_run_replaces_only_segxai_nodes(S):
    import slicer

    scene = slicer.mrmlScene
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    other_ct = S.add_volume_node(ct, "CT other")
    users_seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT SegXAI segmentation")  # same name, not ours
    users_map = S.add_volume_node(ct.like(np.zeros(ct.shape, np.float32)), "CT SegXAI gradcam")
    first = run(S, node, ct)
    other = run(S, other_ct, ct)
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode", "vtkMRMLColorTableNode", "vtkMRMLColorLegendDisplayNode")}
    second = run(S, node, ct)
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    for gone in [first["segmentation"]] + first["maps"]:
        assert not scene.IsNodePresent(gone)
    for kept in [users_seg, users_map, node, other_ct, other["segmentation"]] + other["maps"] + second["maps"]:
        assert scene.IsNodePresent(kept)
    assert len(S.segxai_nodes(scene, node, role="map")) == 2


def test_off_grid_map_is_refused_and_scene_unchanged(S):
    import slicer

    scene = slicer.mrmlScene
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    first = run(S, node, ct)
    before = scene.GetNumberOfNodes()
    labels, maps = results(ct)
    moved = maps[0][1].ijk_to_ras.copy()
    moved[0, 3] += 1.0
    shifted = Volume(maps[0][1].array, moved)
    with pytest.raises(SegXAIError, match="grid"):
        S.show_results(node, labels, CLASSES, [maps[1], ("bad", shifted, {}, False)], {})
    assert scene.GetNumberOfNodes() == before
    assert all(scene.IsNodePresent(n) for n in [first["segmentation"]] + first["maps"])


def test_table_node(S):
    import slicer

    node = S.add_volume_node(oblique_ct(), "CT")
    table = S.table_node([{"segment": "liver", "dice": 0.91234}, {"segment": "spleen", "dice": 0.5}], "SegXAI metrics", node)
    again = S.table_node([{"segment": "liver", "dice": 0.8}], "SegXAI metrics", node)
    assert not slicer.mrmlScene.IsNodePresent(table) and again.GetNumberOfRows() == 1
    assert again.GetCellText(0, 1) == "0.8" and again.GetColumnName(0) == "segment"


def test_scene_saves_and_loads_back(S, tmp_path):
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    run(S, node, ct)
    path = S.save_scene(tmp_path / "review.mrml")
    assert (tmp_path / "CT_SegXAI_segmentation.seg.nrrd").exists() and (tmp_path / "CT_SegXAI_Grad-CAM_liver.nrrd").exists()
    assert '<MRML version="Slicer ' in path.read_text()[:200]
    with pytest.raises(SegXAIError, match="exists"):
        S.save_scene(path)

    scene = S.load_scene(path)
    ct_back = scene.GetFirstNodeByName("CT")
    seg = S.segxai_nodes(scene, ct_back, role="segmentation")[0]
    liver = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("liver"))
    assert S.segment_snomed_code(liver) == "10200004"
    maps = {m.GetAttribute("SegXAI.Method"): m for m in S.segxai_nodes(scene, ct_back, role="map")}
    assert set(maps) == {"gradcam", "ig"}
    grad = maps["gradcam"]
    assert np.allclose(S.ijk_to_ras(grad), ct.ijk_to_ras, atol=1e-5)
    assert grad.GetImageData().GetDimensions() == ct.shape[::-1]
    assert "Inferno" in grad.GetDisplayNode().GetColorNode().GetName()
    assert grad.GetDisplayNode().GetApplyThreshold()
    # the colour tables travel with the scene: a map whose table is lost loads blank (all entries black, alpha 0)
    for m in maps.values():
        table = m.GetDisplayNode().GetColorNode()
        assert table.GetNumberOfColors() == 256
        rgba = np.array([table.GetLookupTable().GetTableValue(i) for i in range(256)])
        assert rgba[-1, :3].max() > 0.3 and rgba[-1, 3] == 1.0
    assert grad.GetAttribute("SegXAI.Version") == __version__
    composite = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == grad.GetID() and composite.GetBackgroundVolumeID() == ct_back.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)


# ---- segxai scene ----------------------------------------------------------------------------------
def _model_for_cli(tmp_path):
    from pathlib import Path
    import shutil

    from SegXAILib.models.store import bundled_models

    if bundled_models():
        return bundled_models()[0]
    checkpoint = Path("/tmp/train/segxai-resunet-3mm/checkpoint")
    import os

    if os.environ.get("SEGXAI_TEST_MODEL"):
        return os.environ["SEGXAI_TEST_MODEL"]
    if (checkpoint / "card.json").exists():
        return str(shutil.copytree(checkpoint, tmp_path / "model"))
    pytest.skip("no bundled model and no checkpoint to test with")


def test_cli_scene_on_real_ct(S, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from SegXAILib import cli
    from SegXAILib.volume import read_volume

    ct_path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz"
    if not ct_path.exists():
        pytest.skip("shared CT not present")
    model = _model_for_cli(tmp_path)
    explaining = importlib.util.find_spec("SegXAILib.explaining") is not None
    methods = ["--methods", "gradcam", "ig", "--steps", "2"] if explaining else []
    out = tmp_path / "out"
    assert cli.main(["scene", str(ct_path), "-o", str(out), "--model", model, "--device", "cpu"] + methods) == 0
    mrml = out / "ct.mrml"
    assert mrml.exists() and (out / "ct_SegXAI_segmentation.seg.nrrd").exists()
    assert cli.main(["scene", str(ct_path), "-o", str(out), "--model", model, "--device", "cpu"]) == 1
    assert "--overwrite" in capsys.readouterr().err

    scene = S.load_scene(mrml)
    ct = read_volume(ct_path)
    ct_node = scene.GetFirstNodeByName("ct")
    assert np.allclose(S.ijk_to_ras(ct_node), ct.ijk_to_ras, atol=1e-4)
    seg = S.segxai_nodes(scene, ct_node, role="segmentation")[0]
    segmentation = seg.GetSegmentation()
    liver = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("liver"))
    assert S.segment_snomed_code(liver) == "10200004"
    # the bundled cards find spleen on no patient: the scene leaves it out and says so
    assert not segmentation.GetSegmentIdBySegmentName("spleen") and "spleen" in seg.GetAttribute("SegXAI.HiddenClasses")
    assert seg.GetDisplayNode().GetVisibility2DOutline() and not seg.GetDisplayNode().GetVisibility2DFill()
    maps = S.segxai_nodes(scene, ct_node, role="map")
    if not explaining:
        assert maps == []
        assert cli.main(["scene", str(ct_path), "-o", str(tmp_path / "x"), "--model", model, "--methods", "gradcam"]) == 1
        assert "explaining" in capsys.readouterr().err
        return
    assert {m.GetAttribute("SegXAI.Method") for m in maps} == {"gradcam", "ig"}
    assert all(m.GetAttribute("SegXAI.TargetClass") for m in maps)
    for m in maps:
        assert np.allclose(S.ijk_to_ras(m), ct.ijk_to_ras, atol=1e-4)
        assert m.GetImageData().GetDimensions() == ct.shape[::-1]
    composite = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == maps[0].GetID()


def test_reference_metrics_rows():
    from SegXAILib.scene import reference_metrics_rows

    ct = oblique_ct()
    labels, _ = results(ct)
    ref = labels.array == 1
    rows = reference_metrics_rows(labels, CLASSES, {"Liver": ref, "kidney": ref})
    assert [r["segment"] for r in rows] == ["liver"] and rows[0]["dice"] == pytest.approx(1.0)
    assert rows[0]["volume_pred_ml"] == pytest.approx(ref.sum() * ct.voxel_volume_ml)


# ---- reruns, edits, hierarchy, class filter (issue 15) ------------------------------------------------
def _count(scene, cls):
    return scene.GetNumberOfNodesByClass(cls)


def test_reruns_do_not_pile_up_volume_rendering_nodes(S):
    """Finding 9: every rerun made one volume property (and ROI) per map and removed none: 2 -> 4 -> 6."""
    import slicer

    scene = slicer.mrmlScene
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    counts = []
    for _ in range(3):
        run(S, node, ct)
        counts.append({c: _count(scene, c) for c in ("vtkMRMLVolumePropertyNode", "vtkMRMLMarkupsROINode",
                                                      "vtkMRMLVolumeRenderingDisplayNode", "vtkMRMLScalarVolumeNode",
                                                      "vtkMRMLVolumePropertyStorageNode")})
    assert counts[0]["vtkMRMLVolumePropertyNode"] == 2  # one per map: the check below is not vacuous
    assert counts[0] == counts[1] == counts[2]


def _paint(seg_node, ct_node, name, box):
    """Change a segment as a user's paint stroke would: set a box of voxels in its mask."""
    import slicer

    segmentation = seg_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, segment_id, ct_node)
    mask[box] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg_node, segment_id, ct_node)


def test_rerun_keeps_a_segmentation_the_user_edited(S):
    """Finding 10: a rerun deleted the previous SegXAI segmentation, manual edits included."""
    import slicer

    scene = slicer.mrmlScene
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    first = run(S, node, ct)["segmentation"]
    painted = (slice(0, 2), slice(0, 3), slice(0, 3))
    _paint(first, node, "liver", painted)
    second = run(S, node, ct)["segmentation"]
    assert scene.IsNodePresent(first) and second is not first
    assert first.GetName().endswith("(edited)") and first.GetAttribute("SegXAI.Role") != "segmentation"
    liver_id = first.GetSegmentation().GetSegmentIdBySegmentName("liver")
    kept = slicer.util.arrayFromSegmentBinaryLabelmap(first, liver_id, node)
    assert kept[painted].all()  # the user's stroke survived
    assert S.segxai_nodes(scene, node, role="segmentation") == [second]
    # an unedited result is still replaced, and the edited one survives every later run
    third = run(S, node, ct)["segmentation"]
    assert not scene.IsNodePresent(second) and scene.IsNodePresent(first) and scene.IsNodePresent(third)


def test_rerun_replaces_an_unedited_segmentation_after_a_save_and_load(S, tmp_path):
    """The digest survives the .seg.nrrd round trip: a reloaded, untouched result is not taken for an edit."""
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    run(S, node, ct)
    scene = S.load_scene(S.save_scene(tmp_path / "s.mrml"))
    ct_back = scene.GetFirstNodeByName("CT")
    old = S.segxai_nodes(scene, ct_back, role="segmentation")[0]
    assert not S.is_edited(old, ct_back)
    labels, maps = results(ct)
    S.show_results(ct_back, labels, CLASSES, maps, {"model": "segxai-test"}, scene=scene)
    assert not scene.IsNodePresent(old)


def test_results_go_under_the_study_of_the_ct(S):
    import slicer

    scene = slicer.mrmlScene
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient A")
    study = hierarchy.CreateStudyItem(patient, "CT abdomen")
    ct_item = hierarchy.GetItemByDataNode(node)
    if ct_item:
        hierarchy.SetItemParent(ct_item, study)
    else:  # slicer-core makes no item for a new node (Slicer's plugins would): file the CT as a user would
        hierarchy.CreateItem(study, node)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    out = run(S, node, ct)
    for made in [out["segmentation"]] + out["maps"]:
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(made)) == study, made.GetName()


def _bundled_card_metrics():
    import json
    from pathlib import Path

    cards = sorted((Path(__file__).resolve().parents[1] / "Resources" / "Models").glob("*/card.json"))
    if not cards:
        pytest.skip("no bundled model card")
    return [(json.loads(p.read_text()), p) for p in cards]


def _never_found(metrics):
    """Classes whose every measured Dice in the card is 0 (an oracle written apart from display.class_evidence)."""
    found, measured = set(), set()
    cases = list((metrics.get("training_cases_not_a_test") or {}).values())
    for key in ("crossval", "crossval_previous_recipe"):
        for fold in (metrics.get(key) or {}).get("folds", []):
            cases += list(fold.get("results", {}).values())
    for case in cases:
        for name, scores in case.items():
            measured.add(name)
            if (scores.get("dice") or 0) > 0:
                found.add(name)
    return measured - found


def test_classes_the_card_never_found_are_not_shown(S):
    """Several organs get 0 mL on every patient: the card's metrics say so, and the scene leaves them out."""
    from SegXAILib.models.card import ClassInfo

    for card, path in _bundled_card_metrics():
        classes = [ClassInfo(c["value"], c["name"], c["color"], c["terminology"]) for c in card["classes"]]
        never = _never_found(card["metrics"])
        assert {"spleen", "stomach", "gallbladder"} <= never, path  # the premise of the finding holds
        ct = oblique_ct()
        node = S.add_volume_node(ct, "CT")
        labels = np.zeros(ct.shape, np.uint8)
        for k, c in enumerate(classes[1:]):  # every class present, so only the card can hide one
            labels[k % ct.shape[0], 2 * k: 2 * k + 2, :] = c.value
        seg = S.show_results(node, ct.like(labels), classes, [], {"model": card["name"]},
                             class_metrics=card["metrics"])["segmentation"]
        segmentation = seg.GetSegmentation()
        names = {segmentation.GetNthSegment(k).GetName() for k in range(segmentation.GetNumberOfSegments())}
        assert names == {c["name"] for c in card["classes"][1:]} - never and "liver" in names
        listed = seg.GetAttribute("SegXAI.Classes").split(", ")
        assert listed == [c["name"] for c in card["classes"][1:]]  # provenance keeps the full class list
        assert set(seg.GetAttribute("SegXAI.HiddenClasses").split(", ")) == never
        assert "spleen" in seg.GetDescription()
        # without a card's measurements nothing is hidden
        seg = S.show_results(node, ct.like(labels), classes, [], {}, class_metrics=None)["segmentation"]
        assert seg.GetSegmentation().GetNumberOfSegments() == len(classes) - 1


def test_segments_display_as_outlines_and_show_3d_builds_surfaces(S):
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    labels, maps = results(ct)
    seg = S.show_results(node, labels, CLASSES, maps, {}, show_3d=True)["segmentation"]
    display = seg.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert S.shape_of(seg) is not None and display.GetVisibility3D()
    S.show_segmentation_3d(seg, False)
    assert not display.GetVisibility3D()


def test_map_names_legends_and_common_scale(S):
    """Node names and legends say method, class, unit, region and layer; one method family shares a window."""
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    labels, maps = results(ct)
    grad = maps[0][1].array
    strong = ("gradcampp", ct.like(3.0 * grad), {"method": "gradcampp", "target_class": "liver"}, False)
    out = S.show_results(node, labels, CLASSES, maps + [strong], {"model": "m"})
    g, ig, pp = out["maps"]
    assert g.GetName() == "CT SegXAI Grad-CAM (liver)" and ig.GetName() == "CT SegXAI Integrated Gradients (liver)"
    title = S.legend_of(g).GetTitleText()
    assert "Grad-CAM: liver" in title and "region predicted" in title and "layer model.2" in title
    assert "Integrated Gradients: liver" in S.legend_of(ig).GetTitleText()
    assert "layer model.2" in g.GetDescription() and "model m" in g.GetDescription()
    # family scale: Grad-CAM and Grad-CAM++ share the top of the wider one (its own 99.5th percentile)
    top = float(np.percentile((3.0 * grad)[grad > 0], 99.5))
    assert g.GetDisplayNode().GetWindowLevelMax() == pytest.approx(top, rel=1e-5)
    assert pp.GetDisplayNode().GetWindowLevelMax() == pytest.approx(top, rel=1e-5)
    import slicer

    assert np.allclose(slicer.util.arrayFromVolume(g), grad)  # the display scale never touches the raw values
    own = S.show_results(node, labels, CLASSES, maps + [strong], {}, scale="map")["maps"][0]
    assert own.GetDisplayNode().GetWindowLevelMax() == pytest.approx(float(np.percentile(grad[grad > 0], 99.5)), rel=1e-5)


def test_output_segmentation_node_is_filled_not_replaced(S):
    """The module's output-segmentation selector: segments go into the chosen node; a user's own node keeps its segments."""
    import slicer

    scene = slicer.mrmlScene
    ct = oblique_ct()
    node = S.add_volume_node(ct, "CT")
    users = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    users.GetSegmentation().AddEmptySegment("", "my lesion")
    labels, maps = results(ct)
    out = S.show_results(node, labels, CLASSES, maps, {}, segmentation_node=users)
    assert out["segmentation"] is users
    names = [users.GetSegmentation().GetNthSegment(k).GetName() for k in range(users.GetSegmentation().GetNumberOfSegments())]
    assert names == ["my lesion", "liver", "spleen"]
    again = S.show_results(node, labels, CLASSES, maps, {})
    assert scene.IsNodePresent(users) and again["segmentation"] is not users
    # SegXAI's own unedited result chosen as the output: refilled in place, no duplicate segments
    mine = again["segmentation"]
    refilled = S.show_results(node, labels, CLASSES, maps, {}, segmentation_node=mine)["segmentation"]
    assert refilled is mine and mine.GetSegmentation().GetNumberOfSegments() == 2
    assert S.segxai_nodes(scene, node, role="segmentation") == [mine]
