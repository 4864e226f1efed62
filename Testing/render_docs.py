"""Render the pictures in ``docs/`` from a scene that ``segxai scene`` wrote, with Slicer's own views.

    segxai scene Resources/Samples/ct_totalseg_A.nii.gz -o OUT --methods hirescam ig lrp --steps 8
    python Testing/render_docs.py OUT/ct_totalseg_A.mrml docs --size 420
    (--restyle Resources/Models/<model>/card.json first rebuilds an older scene with today's display decisions)

Writes ``render_<cam>_ct.png`` (each CAM in the scene), ``render_ig_ct.png``, ``render_lrp_ct.png``,
``render_segments_ct.png``, ``render_3d.png`` and ``render_overview.png`` (CT alone | the first CAM | IG |
outlines), and prints the mean
RGB of each axial picture (the measure of issue 15's finding 6: a veil raises it far above the CT's).
Needs trame-slicer (see ``Testing/render_views.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render_views import Renderer, save_png, side_by_side  # noqa: E402


def liver_offset(renderer, segmentation_node, ct_node, name: str = "liver"):
    """The axial offset (S, mm) through the middle of a segment, or None when there is no such segment."""
    import numpy as np
    import slicer
    import vtk
    from vtk.util import numpy_support

    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    if not segment_id:
        return None
    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)  # this segment alone, 0/1
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return None
    w, h, d = image.GetDimensions()
    mask = numpy_support.vtk_to_numpy(scalars).reshape(d, h, w)
    if not mask.any():
        return None
    k = float(np.nonzero(mask)[0].mean())
    extent = image.GetExtent()
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    to_world = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    i, j = extent[0] + (w - 1) / 2, extent[2] + (h - 1) / 2
    return float((to_world @ np.array([i, j, extent[4] + k, 1.0]))[2])


def pictures(mrml, size: int = 420, offset=None) -> dict:
    """{'ct', 'outlines', <method>...: axial (H, W, 3)} and '3d', from the scene at ``mrml``.

    The axial slice is at ``offset`` mm, by default through the middle of the liver segment.
    """
    from SegXAILib import scene as bridge

    r = Renderer((size, size))
    r.slice_view("Axial")
    r.threed_view()
    r.load(mrml)
    maps = bridge.segxai_nodes(r.scene, None, role="map")
    ct = r.scene.GetNodeByID(maps[0].GetNodeReferenceID(bridge.SOURCE_REFERENCE)) if maps else None
    segs = bridge.segxai_nodes(r.scene, None, role="segmentation")
    seg_display = segs[0].GetDisplayNode() if segs else None
    if offset is None and segs:
        offset = liver_offset(r, segs[0], ct)
    out = {}

    def axial(map_node, with_segments):
        bridge.show_overlay(ct, map_node, bridge.DEFAULT_OPACITY, r.scene)
        if seg_display is not None:
            seg_display.SetVisibility(with_segments)
        return r.render_slice("Axial", offset)

    out["ct"] = axial(None, False)
    for node in maps:
        out[node.GetAttribute("SegXAI.Method")] = axial(node, True)
    out["outlines"] = axial(None, True)
    if segs:
        bridge.show_segmentation_3d(segs[0], True)
        seg_display.SetVisibility(True)
    out["3d"] = r.render_3d()
    return out


def restyle(mrml, out_mrml, card_path) -> Path:
    """Rebuild a saved SegXAI scene with today's display decisions: same CT, labels and map voxels, new look.

    For scenes written before a display change; the maps and labels are read back from the scene, not recomputed.
    """
    import numpy as np
    import slicer

    from SegXAILib import scene as bridge
    from SegXAILib.models.card import ClassInfo
    from SegXAILib.volume import Volume

    old = bridge.load_scene(mrml)
    maps = bridge.segxai_nodes(old, None, role="map")
    ct_node = old.GetNodeByID(maps[0].GetNodeReferenceID(bridge.SOURCE_REFERENCE))
    ct = bridge.volume_from_node(ct_node)
    seg = bridge.segxai_nodes(old, ct_node, role="segmentation")[0]
    import json

    card = json.loads(Path(card_path).read_text())
    classes = [ClassInfo(c["value"], c["name"], c["color"], c.get("terminology", {})) for c in card["classes"]]
    labels = np.zeros(ct.shape, np.uint8)
    segmentation = seg.GetSegmentation()
    for c in classes[1:]:
        segment_id = segmentation.GetSegmentIdBySegmentName(c.name)
        if segment_id:
            labels[slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, ct_node) > 0] = c.value
    keys = ("method", "layer", "target_class", "region", "steps", "model")
    entries = []
    for node in maps:
        meta = {key: node.GetAttribute(bridge.PREFIX + bridge._attribute_key(key)) for key in keys}
        meta = {k: v for k, v in meta.items() if v}
        entries.append((node.GetAttribute(bridge.PREFIX + "Map"), ct.like(np.array(slicer.util.arrayFromVolume(node))),
                        meta, node.GetAttribute(bridge.PREFIX + "Signed") == "True"))
    provenance = {"model": maps[0].GetAttribute(bridge.PREFIX + "Model"),
                  "target_class": maps[0].GetAttribute(bridge.PREFIX + "TargetClass"),
                  "region": maps[0].GetAttribute(bridge.PREFIX + "Region")}
    window = ct_node.GetDisplayNode()
    low, high = window.GetWindowLevelMin(), window.GetWindowLevelMax()
    bridge.new_headless_scene()
    node = bridge.add_volume_node(ct, ct_node.GetName())
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(low, high)
    metrics = card.get("metrics")
    bridge.show_results(node, ct.like(labels), classes, entries, provenance, class_metrics=metrics, show_3d=True)
    return bridge.save_scene(out_mrml, overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mrml")
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=420)
    parser.add_argument("--restyle", metavar="CARD", help="first rebuild the scene with today's display decisions "
                        "(maps and labels read back from it; CARD: the model's card.json, for the classes shown)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    mrml = args.mrml
    if args.restyle:
        mrml = restyle(mrml, out / "restyled" / Path(mrml).name, args.restyle)
    pics = pictures(mrml, args.size)
    cams = [k for k in ("hirescam", "gradcam", "gradcampp") if k in pics]
    for key, name in [(c, f"render_{c}_ct") for c in cams] + [("ig", "render_ig_ct"), ("lrp", "render_lrp_ct"),
                                                             ("outlines", "render_segments_ct"), ("3d", "render_3d")]:
        if key in pics:
            save_png(pics[key], out / f"{name}.png")
    row = [pics[k] for k in ["ct"] + cams[:1] + ["ig", "outlines"] if k in pics]
    save_png(side_by_side(*row), out / "render_overview.png")
    for key, pixels in pics.items():
        if key != "3d":
            print(f"mean axial RGB {key:<9} {pixels.mean():6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
