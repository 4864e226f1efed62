"""The Slicer scene bridge: SegXAI's results as MRML nodes — coded segments, colour-mapped saliency overlays.

The only file of SegXAILib that touches ``slicer``/``vtk``, always lazily inside functions, so importing it
needs neither. The same code runs inside 3D Slicer and under ``slicer-core`` (MRML + module logics, no Qt):
:func:`ensure_scene` builds the scene and logics that Slicer's application would otherwise provide.
How a map or a segment looks (colours, window, what is hidden, legend text, scale) is decided in
:mod:`SegXAILib.display`; this file only applies those decisions to MRML nodes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from . import __version__
from . import display as look
from .errors import SegXAIError
from .volume import Volume

#: attribute marking a node SegXAI made, and what it is ("segmentation", "map", "colormap", "table")
ROLE = "SegXAI.Role"
#: node reference from each SegXAI node to the input volume it belongs to
SOURCE_REFERENCE = "SegXAI.source"
#: attribute prefix for provenance (model, method, layer, target class, region, steps, version, scores)
PREFIX = "SegXAI."
#: opacity of the saliency overlay over the CT in slice views (decided in :mod:`SegXAILib.display`)
DEFAULT_OPACITY = look.DEFAULT_OPACITY
#: attribute holding a digest of a segmentation's masks and names as SegXAI made it (edits change it)
CONTENT_HASH = PREFIX + "ContentHash"
#: role of a segmentation SegXAI must never replace: one the user edited, or the user's own node it wrote into
KEPT_ROLE = "segmentation (kept)"
#: version string written into saved scenes when no running Slicer tells us its own ("App major.minor.patch rev")
DEFAULT_SCENE_VERSION = "Slicer 5.8.0 33216"

# ---- scene and logics ---------------------------------------------------------------------------
def require_slicer() -> None:
    """A clear error when neither 3D Slicer nor slicer-core is importable."""
    try:
        import slicer  # noqa: F401
        import vtk  # noqa: F401
    except ImportError:
        raise SegXAIError("this needs 3D Slicer or slicer-core: pip install slicer-core==5.11.0.6 vtk==9.6.0") from None


def in_slicer_app() -> bool:
    """True inside a running 3D Slicer (``slicer.app`` exists), False under slicer-core."""
    import slicer

    return getattr(slicer, "app", None) is not None


def _logic(name: str):
    """``slicer.modules.<name>.logic()`` or None when that module (or its logic) is absent."""
    import slicer

    module = getattr(getattr(slicer, "modules", None), name, None)
    try:
        return module.logic() if module is not None else None
    except Exception:
        return None


def ensure_scene():
    """The current MRML scene; under slicer-core, create one with an application logic and module logics.

    Fills ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` for the logics ``slicer.util`` and this
    bridge ask for (colors, volumes, segmentations, terminologies, volumerendering, subjecthierarchy).
    """
    import slicer

    if in_slicer_app() or getattr(slicer, "mrmlScene", None) is not None:
        return slicer.mrmlScene
    return new_headless_scene()


def new_headless_scene():
    """A fresh slicer-core scene with its logics, made current (replaces any previous headless one)."""
    import slicer

    if in_slicer_app():
        raise SegXAIError("new_headless_scene is for slicer-core only; inside Slicer use slicer.mrmlScene")
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    modules = SimpleNamespace()
    makers = {
        "colors": "vtkSlicerColorLogic",
        "volumes": "vtkSlicerVolumesLogic",
        "segmentations": "vtkSlicerSegmentationsModuleLogic",
        "terminologies": "vtkSlicerTerminologiesModuleLogic",
        "volumerendering": "vtkSlicerVolumeRenderingLogic",
        "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
        "tables": "vtkSlicerTablesLogic",
    }
    keep = []
    for name, cls in makers.items():
        maker = getattr(slicer, cls, None)
        if maker is None:
            continue
        logic = maker()
        if hasattr(logic, "SetMRMLApplicationLogic"):
            logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        keep.append(logic)
        setattr(modules, name, SimpleNamespace(logic=(lambda lg=logic: lg)))
    slicer.mrmlScene = scene
    slicer.modules = modules
    slicer._segxai_headless = (app, keep)  # keep the logics alive as long as the scene
    if hasattr(slicer.vtkMRMLSliceNode, "AddDefaultSliceOrientationPresets"):  # as Slicer's application does:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)  # else saved views are "Reformat"
    _ensure_slice_views(scene)
    return scene


def _ensure_slice_views(scene) -> None:
    """Red/Yellow/Green slice + composite nodes, as Slicer's layout makes them, when the scene has none."""
    import slicer

    if scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"):
        return
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        slice_node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # copies the scene's default orientation presets
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        slice_node.SetSingletonTag(name)
        slice_node = scene.AddNode(slice_node)
        if hasattr(slice_node, "SetOrientation"):
            slice_node.SetOrientation(orientation)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)


# ---- volumes ------------------------------------------------------------------------------------
def _vtk_matrix(matrix: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    return m


def ijk_to_ras(node) -> np.ndarray:
    """A volume node's IJK→RAS as a 4×4 numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(node) -> Volume:
    """A `Volume` (copy of the voxels, KJI) from a scalar volume node; transforms are not applied."""
    import slicer

    if node is None or node.GetImageData() is None:
        raise SegXAIError("the input volume node has no image data; load a CT volume first")
    if node.GetParentTransformNode() is not None:
        raise SegXAIError(f"{node.GetName()} is under a transform; harden the transform first (Data module) and retry")
    return Volume(np.array(slicer.util.arrayFromVolume(node)), ijk_to_ras(node))


def add_volume_node(volume: Volume, name: str, scene=None, label: bool = False):
    """A new scalar (or labelmap) volume node holding ``volume``'s voxels and geometry, with a display node."""
    import slicer

    scene = scene or ensure_scene()
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


# ---- display ranges and colour tables ----------------------------------------------------------------
def display_range(array: np.ndarray, signed: bool, low_pct: float = 1.0, high_pct: float = 99.5, faint: float = 0.1) -> dict:
    """Window and threshold of a map on its own scale (kept for callers; the decisions live in ``display``)."""
    low, high = look.robust_range(array, signed, low_pct, high_pct)
    return {"window_min": low, "window_max": high, "threshold": float("-inf") if signed else faint * high}


def _color_node(scene, style):
    """SegXAI's colour table for ``style`` (inferno, or diverging with its clear band around zero), made once."""
    name = look.COLORMAP_NODE_NAMES[style.colormap]
    band = f"{style.clear_band:.6g}"
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if (node.GetAttribute(ROLE) == "colormap" and node.GetName() == name
                and (node.GetAttribute(PREFIX + "ClearBand") or "0") == band):
            return node
    colors = look.colormap_rgba(style.colormap, clear_band=style.clear_band)
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(colors))
    for i, (r, g, b, a) in enumerate(colors):
        node.SetColor(i, f"{i}", float(r), float(g), float(b), float(a))
    node.SetAttribute(ROLE, "colormap")
    node.SetAttribute(PREFIX + "ClearBand", band)
    node.SetAttribute(PREFIX + "Version", __version__)
    return node


# ---- SegXAI's own nodes -------------------------------------------------------------------------
def segxai_nodes(scene=None, input_node=None, role: Optional[str] = None) -> list:
    """Nodes SegXAI made (optionally only those of ``input_node`` and of one role)."""
    scene = scene or ensure_scene()
    found = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        node_role = node.GetAttribute(ROLE)
        if not node_role or (role is not None and node_role != role):
            continue
        if input_node is not None and node.GetNodeReferenceID(SOURCE_REFERENCE) != input_node.GetID():
            continue
        found.append(node)
    return found


def remove_segxai_nodes(scene, input_node) -> int:
    """Remove what earlier runs made for ``input_node`` (with display/storage nodes); nothing else."""
    nodes = [n for n in segxai_nodes(scene, input_node) if n.GetAttribute(ROLE) != "colormap"]
    for node in nodes:
        _remove_with_companions(scene, node)
    return len(nodes)


def _mark(node, input_node, role: str, provenance: dict) -> None:
    node.SetAttribute(ROLE, role)
    node.SetAttribute(PREFIX + "Version", __version__)
    for key, value in provenance.items():
        if key == "scores" and isinstance(value, dict):  # numeric quality scores, one attribute each
            for name, score in value.items():
                if isinstance(score, (int, float)) and not isinstance(score, bool):
                    node.SetAttribute(PREFIX + "Score." + str(name), f"{float(score):.6g}")
        elif value is not None and not isinstance(value, (dict, list, tuple)):
            node.SetAttribute(PREFIX + _attribute_key(key), str(value))
    node.SetNodeReferenceID(SOURCE_REFERENCE, input_node.GetID())


def _attribute_key(key: str) -> str:
    """'target_class' → 'TargetClass', 'steps' → 'Steps': attribute names in Slicer's CamelCase style."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\s]+", str(key)) if part)


# ---- terminology ----------------------------------------------------------------------------------
def _code(entry) -> str:
    return "^".join(str(v) for v in entry) if entry else "^^"


def terminology_string(terminology: dict) -> str:
    """Slicer's serialized terminology entry (segment tag "TerminologyEntry") from a slicerio-style dict."""
    if not terminology:
        return ""
    return "~".join([
        terminology.get("contextName", ""),
        _code(terminology.get("category")),
        _code(terminology.get("type")),
        _code(terminology.get("typeModifier")),
        terminology.get("anatomicContextName", ""),
        _code(terminology.get("anatomicRegion")),
        _code(terminology.get("anatomicRegionModifier")),
    ])


def segment_snomed_code(segment) -> str:
    """The type code (e.g. '10200004' for liver) from a vtkSegment's terminology tag, '' if none."""
    import slicer

    tag = segment.GetTerminology() if hasattr(segment, "GetTerminology") else None
    if not tag:
        tag = segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName()) if hasattr(segment, "GetTag") else ""
        if isinstance(tag, tuple):
            tag = tag[1] if tag[0] else ""
    parts = (tag or "").split("~")
    return parts[2].split("^")[1] if len(parts) > 2 and "^" in parts[2] else ""


def _set_terminology(segment, text: str) -> None:
    import slicer

    if not text:
        return
    if hasattr(segment, "SetTerminology"):  # Slicer ≥ 5.7
        segment.SetTerminology(text)
    else:
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), text)


# ---- building the results -------------------------------------------------------------------------
def _check_grid(volume: Volume, input_node, what: str) -> None:
    reference = Volume(np.zeros((1, 1, 1), np.uint8), ijk_to_ras(input_node))
    dims = input_node.GetImageData().GetDimensions()
    if tuple(volume.shape) != tuple(dims[::-1]) or not np.allclose(volume.ijk_to_ras, reference.ijk_to_ras, atol=1e-4):
        raise SegXAIError(f"{what} is not on the input volume's grid (shape {volume.shape} vs {tuple(dims[::-1])}); "
                          "results must be resampled to the input before they reach the scene")


def add_segmentation(input_node, labels: Volume, classes: list, provenance: dict, scene=None, *,
                     class_metrics: Optional[dict] = None, segmentation_node=None, show_3d: bool = False):
    """A Segmentation node with one segment per shown foreground class (name, colour, terminology code).

    ``class_metrics`` (a model card's ``metrics``) hides the classes the card never found
    (:func:`SegXAILib.display.shown_classes`); every class stays listed in the provenance attributes.
    ``segmentation_node``: fill this node instead of a new one (its own segments are kept). Segments are
    drawn as outlines in slice views and, with ``show_3d``, as closed surfaces in 3D.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    scene = scene or ensure_scene()
    _check_grid(labels, input_node, "the label volume")
    node = segmentation_node
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{input_node.GetName()} SegXAI segmentation")
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    array = np.asarray(labels.array)
    dims = array.shape[::-1]
    shown = look.shown_classes(classes, class_metrics)
    for c in shown:
        mask = np.ascontiguousarray((array == c.value).astype(np.uint8))
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(*dims)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
        image.SetImageToWorldMatrix(_vtk_matrix(labels.ijk_to_ras))
        color = [v / 255.0 for v in c.color]
        segment_id = node.AddSegmentFromBinaryLabelmapRepresentation(image, c.name, color)
        segment = node.GetSegmentation().GetSegment(segment_id)
        _set_terminology(segment, terminology_string(c.terminology))
        segment.SetTag(PREFIX + "LabelValue", str(c.value))
    if hasattr(node.GetSegmentation(), "CollapseBinaryLabelmaps"):
        node.GetSegmentation().CollapseBinaryLabelmaps(False)
    everything = [c.name for c in classes if c.value != 0]
    hidden = look.hidden_classes(classes, class_metrics)
    _mark(node, input_node, "segmentation", dict(provenance, classes=", ".join(everything),
                                                 hidden_classes=", ".join(hidden)))
    node.SetDescription(_segmentation_description(provenance, everything, hidden))
    style_segments(node, show_3d)
    node.SetAttribute(CONTENT_HASH, content_hash(node, input_node))
    return node


def _segmentation_description(provenance: dict, everything: list, hidden: list) -> str:
    text = f"SegXAI segmentation by {provenance.get('model') or 'the model'}"
    if hidden:
        text += (f". Not shown: {', '.join(hidden)} (the model card does not report them found on any measured"
                 f" patient); the model outputs {', '.join(everything)}")
    return text + "."


def style_segments(segmentation_node, show_3d: Optional[bool] = None) -> None:
    """Outlines (no fill) in slice views, so a map under them keeps its colours; closed surfaces for 3D."""
    shape = look.SEGMENTS
    display = segmentation_node.GetDisplayNode()
    if display is None:
        return
    display.SetVisibility2DFill(shape.fill_2d)
    display.SetVisibility2DOutline(shape.outline_2d)
    display.SetSliceIntersectionThickness(shape.outline_width)
    display.SetOpacity3D(shape.opacity_3d)
    if show_3d is not None:
        show_segmentation_3d(segmentation_node, show_3d)


def show_segmentation_3d(segmentation_node, visible: bool = True) -> None:
    """Show 3D: build the closed-surface representation (once) and show it in 3D views, or hide it."""
    if visible and shape_of(segmentation_node) is None:
        segmentation_node.CreateClosedSurfaceRepresentation()
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(bool(visible))


def shape_of(segmentation_node):
    """The closed-surface representation's name when the segmentation has one, else None."""
    import slicer

    name = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    return name if segmentation.ContainsRepresentation(name) else None


def content_hash(segmentation_node, input_node) -> str:
    """A digest of every segment's name and mask on the input's grid: changes when the user edits a segment."""
    import hashlib

    import slicer

    digest = hashlib.sha256()
    segmentation = segmentation_node.GetSegmentation()
    for k in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(k)
        digest.update(segmentation.GetSegment(segment_id).GetName().encode("utf-8") + b"\0")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, input_node)
        digest.update(np.packbits(np.asarray(mask) > 0).tobytes())
    return digest.hexdigest()


def is_edited(segmentation_node, input_node) -> bool:
    """True when a SegXAI segmentation no longer holds what SegXAI wrote (segments painted, added, renamed, removed)."""
    if segmentation_node.GetAttribute(ROLE) == KEPT_ROLE:
        return True
    made = segmentation_node.GetAttribute(CONTENT_HASH)
    if not made:
        return False  # made before SegXAI stored digests: nothing tells an edit apart
    return content_hash(segmentation_node, input_node) != made


def keep_as_edited(segmentation_node) -> None:
    """Take an edited segmentation out of SegXAI's hands: later runs leave it alone."""
    segmentation_node.SetAttribute(ROLE, KEPT_ROLE)
    segmentation_node.SetAttribute(PREFIX + "Edited", "true")
    if not segmentation_node.GetName().endswith("(edited)"):
        segmentation_node.SetName(f"{segmentation_node.GetName()} (edited)")


def add_map(input_node, name: str, volume: Volume, metadata: dict, signed: bool, provenance: dict, scene=None, *,
            window: Optional[tuple] = None, scale: str = "map", opacity: float = DEFAULT_OPACITY):
    """One explanation map as a scalar volume on the input's grid: colour map, window, what is hidden, legend, VR.

    ``window`` is the display range (from :func:`SegXAILib.display.common_windows`; default the map's own
    robust range); the voxels keep their raw values.
    """
    import slicer

    scene = scene or ensure_scene()
    _check_grid(volume, input_node, f"map {name!r}")
    info = dict(provenance, **metadata)
    method = info.get("method") or name
    style = look.map_style(volume.array, method, signed, target_class=info.get("target_class"),
                           region=info.get("region"), layer=info.get("layer"), window=window, scale=scale,
                           opacity=opacity)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", _map_node_name(input_node, name, method, style, info))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array, dtype=np.float32))
    node.CopyOrientation(input_node)
    node.CreateDefaultDisplayNodes()
    apply_map_style(node, style, scene)
    _mark(node, input_node, "map", dict(info, signed=style.signed, map=name, scale=scale,
                                        window=f"{style.window[0]:.6g} {style.window[1]:.6g}"))
    node.SetDescription(look.description(method, info.get("target_class"), info.get("region"), info.get("layer"),
                                         info.get("model"), style.signed, scale))
    _add_legend(node, style)
    _add_volume_rendering(scene, node)
    return node


def _map_node_name(input_node, name: str, method: str, style, info: dict) -> str:
    """'ct SegXAI Grad-CAM (liver)': the method in plain words and the class it explains."""
    title = look.method_info(method, style.signed).title
    label = title if name == method else f"{title} {name}"
    target = info.get("target_class")
    return f"{input_node.GetName()} SegXAI {label}" + (f" ({target})" if target else "")


def apply_map_style(node, style, scene=None) -> None:
    """Set a map node's display from a :class:`SegXAILib.display.MapStyle` (also for a changed window)."""
    scene = scene or node.GetScene()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(_color_node(scene, style).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*style.window)
    display.AutoThresholdOff()
    if style.threshold is None:  # signed: the colour table's clear band hides the values around zero
        display.ApplyThresholdOff()
    else:
        display.SetThreshold(*style.threshold)
        display.ApplyThresholdOn()
    display.SetInterpolate(True)


def _add_legend(node, style) -> None:
    """A colour legend (hidden until the map is the overlay): method and class, then unit, region and layer."""
    logic = _logic("colors")
    if logic is None or not hasattr(logic, "AddDefaultColorLegendDisplayNode"):
        return
    legend = logic.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText(f"{style.title}\n{style.subtitle}")
        legend.SetLabelFormat(style.label_format)
        legend.SetVisibility(False)
        legend.SetAttribute(ROLE, "legend")


def _add_volume_rendering(scene, node) -> None:
    """Volume-rendering display nodes for the map, hidden by default (the user turns them on)."""
    logic = _logic("volumerendering")
    if logic is None:
        return
    try:
        display = logic.CreateDefaultVolumeRenderingNodes(node)
    except Exception:  # slicer-core without presets: rendering is optional
        return
    if display is not None:
        display.SetVisibility(False)
        for getter in ("GetVolumePropertyNode", "GetROINode", "GetMarkupsROINode"):
            made = getattr(display, getter, lambda: None)()
            if made is not None:  # mark what VR made for this map, so a rerun removes it with the map
                made.SetAttribute(PREFIX + "MadeFor", node.GetID())


def legend_of(node):
    """The colour legend display node of a map node, or None."""
    for k in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(k)
        if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
            return display
    return None


def show_overlay(input_node, map_node, opacity: float = DEFAULT_OPACITY, scene=None) -> None:
    """CT as background and ``map_node`` as foreground in every slice view; only its legend visible."""
    scene = scene or ensure_scene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(input_node.GetID())
        composite.SetForegroundVolumeID(map_node.GetID() if map_node is not None else None)
        composite.SetForegroundOpacity(float(opacity))
    for other in segxai_nodes(scene, input_node, role="map"):
        legend = legend_of(other)
        if legend is not None:
            legend.SetVisibility(other is map_node)


def set_overlay_opacity(opacity: float, scene=None) -> None:
    """Foreground opacity in every slice view (the module's opacity slider)."""
    scene = scene or ensure_scene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").SetForegroundOpacity(float(opacity))


def place_in_hierarchy(nodes: list, input_node, scene=None) -> None:
    """Put result nodes beside the input in the subject hierarchy: under its study (its parent item)."""
    import slicer

    scene = scene or ensure_scene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    input_item = hierarchy.GetItemByDataNode(input_node)
    if not input_item:
        return
    parent = hierarchy.GetItemParent(input_item)
    if not parent:
        return
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if not item:  # Slicer's plugins make an item for every data node; slicer-core alone does not
            hierarchy.CreateItem(parent, node)
        elif hierarchy.GetItemParent(item) != parent:
            hierarchy.SetItemParent(item, parent)


def show_results(input_node, labels: Optional[Volume], classes: list, maps: list, provenance: dict,
                 scene=None, opacity: float = DEFAULT_OPACITY, *, class_metrics: Optional[dict] = None,
                 scale: str = "family", segmentation_node=None, show_3d: bool = False) -> dict:
    """Put one run's results in the scene, replacing only what SegXAI made earlier for the same input.

    ``maps`` is a list of ``(name, Volume, metadata, signed)``; every volume must lie on the input's grid.
    ``class_metrics``: the model card's ``metrics``, to show only the classes it found; ``scale``: "family"
    (maps of one method family share a colour scale) or "map"; ``segmentation_node``: write the segments
    there instead of a new node; ``show_3d``: closed surfaces in 3D views. A previous SegXAI segmentation
    the user edited is kept (renamed "... (edited)") and a new one is made. On any error the nodes made so
    far are removed again, so the scene is left as it was.
    """
    scene = scene or ensure_scene()
    if input_node is None or not scene.IsNodePresent(input_node):
        raise SegXAIError("the input volume is not in the scene")
    provenance = dict(provenance or {})
    if labels is not None:
        _check_grid(labels, input_node, "the label volume")
    for name, volume, _, _ in maps:
        _check_grid(volume, input_node, f"map {name!r}")
    windows = look.common_windows([(name, (meta or {}).get("method") or name, volume.array, bool(signed))
                                   for name, volume, meta, signed in maps], scale)
    # edits first: an edited previous segmentation leaves SegXAI's hands before anything is replaced
    for old in segxai_nodes(scene, input_node, role="segmentation"):
        if old is not segmentation_node and is_edited(old, input_node):
            keep_as_edited(old)
    reused = segmentation_node is not None and segmentation_node.GetAttribute(ROLE) == "segmentation" \
        and not is_edited(segmentation_node, input_node)
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    made = []
    try:
        segmentation = None
        if labels is not None:
            target = segmentation_node
            if reused:
                target.GetSegmentation().RemoveAllSegments()
            segmentation = add_segmentation(input_node, labels, classes, provenance, scene, class_metrics=class_metrics,
                                            segmentation_node=target, show_3d=show_3d)
            if segmentation_node is not None and not reused:
                segmentation.SetAttribute(ROLE, KEPT_ROLE)  # the user's node: filled, never replaced later
            made.append(segmentation)
        map_nodes = []
        for name, volume, metadata, signed in maps:
            node = add_map(input_node, name, volume, dict(metadata or {}), bool(signed), provenance, scene,
                           window=windows[name], scale=scale, opacity=opacity)
            map_nodes.append(node)
            made.append(node)
    except BaseException:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in before]):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
        raise
    # the new results are complete: now drop the previous run's nodes (never anybody else's, never edits)
    new_ids = {n.GetID() for n in made}
    for node in segxai_nodes(scene, input_node):
        if node.GetID() not in new_ids and node.GetAttribute(ROLE) not in ("colormap", KEPT_ROLE):
            _remove_with_companions(scene, node)
    if input_node.GetDisplayNode() is None:
        input_node.CreateDefaultDisplayNodes()
    _ensure_slice_views(scene)
    place_in_hierarchy(made, input_node, scene)
    show_overlay(input_node, map_nodes[0] if map_nodes else None, opacity, scene)
    return {"segmentation": segmentation, "maps": map_nodes}


def _remove_with_companions(scene, node) -> None:
    """Remove a node with its display and storage nodes and what volume rendering made for it."""
    companions = []
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"), ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            companions += [getattr(node, getter)(k) for k in range(getattr(node, count)())]
    for display in list(companions):
        for getter in ("GetVolumePropertyNode", "GetROINode", "GetMarkupsROINode"):
            extra = getattr(display, getter, lambda: None)() if display is not None else None
            if extra is not None and extra.GetAttribute(PREFIX + "MadeFor") == node.GetID():
                companions.append(extra)
                storage = extra.GetStorageNode() if hasattr(extra, "GetStorageNode") else None
                if storage is not None:
                    companions.append(storage)
    for extra in companions:
        if extra is not None and scene.IsNodePresent(extra):
            scene.RemoveNode(extra)
    if scene.IsNodePresent(node):
        scene.RemoveNode(node)


# ---- tables ---------------------------------------------------------------------------------------
def table_node(rows: list, name: str, input_node=None, scene=None):
    """A table node (one column per key of the rows' union, values as text), replacing SegXAI's same-named one."""
    scene = scene or ensure_scene()
    for old in segxai_nodes(scene, input_node, role="table"):
        if old.GetName() == name:
            _remove_with_companions(scene, old)
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    for key in keys:
        column = node.AddColumn()
        column.SetName(str(key))
    for row in rows:
        r = node.AddEmptyRow()
        for c, key in enumerate(keys):
            value = row.get(key, "")
            node.SetCellText(r, c, f"{value:.4g}" if isinstance(value, float) else str(value))
    node.SetAttribute(ROLE, "table")
    node.SetAttribute(PREFIX + "Version", __version__)
    if input_node is not None:
        node.SetNodeReferenceID(SOURCE_REFERENCE, input_node.GetID())
    return node


# ---- saving and loading ---------------------------------------------------------------------------
def scene_version() -> str:
    """The scene version string of the running Slicer ("Slicer 5.8.0 33216"), or SegXAI's default."""
    import slicer

    app = getattr(slicer, "app", None)
    if app is not None:
        try:
            return f"{app.applicationName} {app.majorVersion}.{app.minorVersion}.{app.patchVersion} {app.revision}"
        except AttributeError:
            pass
    return DEFAULT_SCENE_VERSION


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "node"


def save_scene(path: str | os.PathLike, scene=None, overwrite: bool = False) -> Path:
    """Write ``path`` (.mrml) and every storable node's data beside it (.nrrd, .seg.nrrd, colour tables)."""
    scene = scene or ensure_scene()
    path = Path(path).resolve()
    if path.suffix.lower() != ".mrml":
        raise SegXAIError(f"{path} must end with .mrml")
    if path.exists() and not overwrite:
        raise SegXAIError(f"{path} exists; pass --overwrite to replace it, or choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    # first decide every file name and refuse before anything is written
    used = set()
    plan = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        if not node.GetSaveWithScene():
            continue
        if node.IsA("vtkMRMLColorNode") and node.GetAttribute(ROLE) != "colormap":
            continue  # Slicer's own colour tables come with every Slicer; SegXAI's must be written or maps load blank
        storage = node.GetStorageNode()
        if storage is None:
            storage = node.CreateDefaultStorageNode()
            if storage is None:
                continue
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        extension = storage.GetDefaultWriteFileExtension() or "nrrd"
        base = _file_name(node.GetName())
        while base in used:
            base += "_"
        used.add(base)
        target = path.parent / f"{base}.{extension}"
        current = storage.GetFileName()
        if current and Path(current).resolve() == target.resolve():
            continue  # the node was read from exactly this file: never rewrite the user's input in place
        if target.exists() and not overwrite:
            raise SegXAIError(f"{target} exists; pass --overwrite to replace it, or choose another output folder")
        plan.append((node, storage, target))
    for node, storage, target in plan:
        storage.SetFileName(str(target))
        if hasattr(storage, "SetUseCompression"):
            storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise SegXAIError(f"could not write {target} for node {node.GetName()!r}")
    scene.SetVersion(scene_version())
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    if not scene.Commit():
        raise SegXAIError(f"could not write the scene {path}")
    return path


def load_scene(path: str | os.PathLike, scene=None):
    """Load a .mrml scene (and its data files) into ``scene`` (default: a fresh headless one / Slicer's)."""
    path = Path(path)
    if not path.exists():
        raise SegXAIError(f"no such scene file: {path}")
    if scene is None:
        scene = ensure_scene() if in_slicer_app() else new_headless_scene()
    scene.SetURL(str(path.resolve()))
    if not scene.Import():
        raise SegXAIError(f"could not load the scene {path}")
    return scene


def reference_metrics_rows(labels: Volume, classes: list, reference_masks: dict) -> list:
    """Dice, IoU, HD95, volumes … per class against a reference segmentation's masks (matched by name).

    ``reference_masks`` maps a segment name to a boolean (K, J, I) array on the labels' grid; classes without
    a same-named reference segment (case-insensitive) are left out.
    """
    from .metrics import mask_metrics

    by_name = {str(k).lower(): v for k, v in reference_masks.items()}
    rows = []
    for c in classes:
        ref = by_name.get(c.name.lower())
        if c.value == 0 or ref is None:
            continue
        if tuple(ref.shape) != labels.shape:
            raise SegXAIError(f"the reference segment {c.name!r} is not on the input's grid")
        scores = mask_metrics(labels.array == c.value, np.asarray(ref) > 0, labels.spacing[::-1], labels.voxel_volume_ml)
        rows.append(dict({"segment": c.name}, **{k: float(v) for k, v in scores.items()}))
    return rows
