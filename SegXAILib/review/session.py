"""One review case as a Slicer scene: built by :func:`SegXAILib.scene.show_results` (the same display decisions
as the Slicer module and ``segxai scene``), saved to a private temporary folder, never into the results folder.

The page changes the scene only through :class:`CaseScene` (method, opacity, threshold), which calls the scene
bridge's own functions, so what the browser shows is what Slicer would show.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .. import display as look
from ..errors import SegXAIError
from .folder import Case, segment_classes

#: CT window of the views (abdomen), as ``segxai scene`` sets it
CT_WINDOW = (-160.0, 240.0)


def map_entries(case: Case) -> list:
    """``(name, Volume, metadata, signed)`` per map of the case, metadata carrying the report's scores and checks."""
    from ..volume import read_volume

    layer = case.report.get("layer") or ""
    out = []
    for method, path in case.maps.items():
        entry = case.report["methods"].get(method) or {}
        info = look.method_info(method)
        meta = {"method": method, "layer": layer if info.uses_layer else "", "scores": entry.get("quality") or {},
                "checks": entry.get("checks") or {}}
        out.append((method, read_volume(path), meta, info.signed))
    return out


def read_labels(case: Case):
    """The case's label volume (None without a label file): read once per case shown, and handed to the scene, the
    reference and the slice focus."""
    from ..volume import read_volume

    return read_volume(case.labels) if case.labels is not None else None


def case_reference(case: Case, given=None, labels=None) -> tuple:
    """``(Reference or None, note)``: the reference given (``--reference``) or the one ``segxai explain --reference``
    recorded in the report, read against the case's labels (``labels``: already read); the note says what was
    compared, or why nothing was."""
    from .reference import read_reference

    path = given or case.report.get("reference")
    if not path:
        return None, ""
    if case.labels is None:
        return None, f"the reference {path} is not compared: the case has no label file ({case.stem}_labels.nii.gz)"
    if not Path(path).is_file():
        return None, f"the reference {path} (recorded by segxai explain) is missing; give it with --reference FILE"
    target = case.report.get("target") or {}
    if target.get("value") is None:
        return None, "the report does not say the explained class's label value; the reference is not compared"
    try:
        reference = read_reference(path, labels if labels is not None else read_labels(case), int(target["value"]))
    except SegXAIError as error:  # an unreadable or empty reference: the case still shows, the note says why
        return None, f"the reference {path} is not compared: {error}"
    return reference, (f"Predicted {case.target_class} against the reference {Path(path).name} ({reference.read_as}; "
                       f"white outline)")


def build_scene_file(case: Case, work_dir, reference=None, labels=None) -> Path:
    """The case's scene as ``<work_dir>/<stem>.mrml`` (CT, segments with 3D surfaces, every map styled, and the
    reference's outline when given)."""
    from .. import scene as bridge
    from ..volume import read_volume

    if case.ct is None:
        raise SegXAIError(f"the CT of {case.stem} was not found (not in the folder, report input missing); "
                          f"give it with --ct FILE")
    ct = read_volume(case.ct)
    labels = labels if labels is not None else read_labels(case)
    bridge.new_headless_scene()
    node = bridge.add_volume_node(ct, case.stem)
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(*CT_WINDOW)
    provenance = {"model": case.report.get("model"), "target_class": case.target_class,
                  "region": (case.report.get("target") or {}).get("region")}
    bridge.show_results(node, labels, segment_classes(case) if labels is not None else [], map_entries(case),
                        provenance, show_3d=labels is not None)
    if reference is not None:
        add_reference_outline(node, ct.like(reference.mask.astype("uint8")), case.target_class, provenance)
    return bridge.save_scene(Path(work_dir) / f"{case.stem}.mrml")


def add_reference_outline(input_node, mask, class_name: str, provenance: dict):
    """The reference of the explained class as its own segmentation: a white outline (``display.REFERENCE_COLOR``),
    no 3D surface, so the predicted outline and the map stay readable beside it."""
    from .. import scene as bridge
    from ..models.card import ClassInfo

    info = ClassInfo(1, f"reference {class_name}", list(look.REFERENCE_COLOR))
    node = bridge.add_segmentation(input_node, mask, [ClassInfo(0, "background"), info], provenance, show_3d=False)
    node.SetName(f"{input_node.GetName()} reference {class_name}")
    node.SetAttribute(bridge.ROLE, "reference")
    return node


def focus_point(case: Case, entries: list, labels=None):
    """RAS (mm) the slice views centre on: the centre of the explained class's segment, else the first map's
    strongest voxel; None when neither is there. The volume's centre often misses the organ (the pelvis, not the liver)."""
    import numpy as np

    grid = None
    labels = labels if labels is not None else read_labels(case)
    if labels is not None:
        value = (case.report.get("target") or {}).get("value")
        mask = labels.array == value if value is not None else labels.array > 0
        if mask.any():
            grid, index = labels, np.argwhere(mask).mean(axis=0)
    if grid is None and entries:
        volume = entries[0][1]
        grid, index = volume, np.array(np.unravel_index(np.argmax(np.abs(volume.array)), volume.shape), float)
    if grid is None:
        return None
    k, j, i = index
    return (grid.ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]


class CaseScene:
    """The loaded case inside the trame-slicer application's scene, and the page's controls acting on it."""

    def __init__(self, scene, case: Case, entries: list, labels=None):
        from .. import scene as bridge

        self.bridge, self.scene, self.case = bridge, scene, case
        self.ct_node = scene.GetFirstNodeByName(case.stem)
        self.map_nodes = {n.GetAttribute("SegXAI.Method"): n for n in bridge.segxai_nodes(scene, self.ct_node, role="map")}
        self.entries = {name: (volume, meta, signed) for name, volume, meta, signed in entries}
        self.windows = look.common_windows([(n, m["method"], v.array, s) for n, (v, m, s) in self.entries.items()],
                                           "family")
        self.methods = [m for m in case.maps if m in self.map_nodes]
        self.method = self.methods[0] if self.methods else None
        self.opacity = look.DEFAULT_OPACITY
        self.faint = look.FAINT
        self.focus = focus_point(case, entries, labels)

    def centre_slices(self) -> None:
        """Every slice view through :attr:`focus` (kept in plane: only the slice offset moves)."""
        if self.focus is None:
            return
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByOffsetting(*[float(x) for x in self.focus])

    def style(self, method: str):
        volume, meta, signed = self.entries[method]
        return look.map_style(volume.array, method, signed, target_class=self.case.target_class,
                              region=(self.case.report.get("target") or {}).get("region"), layer=meta.get("layer"),
                              window=self.windows[method], scale="family", opacity=self.opacity, faint=self.faint)

    def show(self, method=None, opacity=None, faint=None) -> None:
        """Show ``method``'s map over the CT at ``opacity``, hiding values below ``faint`` of the window top."""
        if method is not None:
            if method not in self.map_nodes:
                raise SegXAIError(f"no map {method!r} in this case; choose one of {', '.join(self.methods)}")
            self.method = method
        if opacity is not None:
            self.opacity = min(max(float(opacity), 0.0), 1.0)
        if faint is not None:
            self.faint = min(max(float(faint), 0.0), 1.0)
        node = self.map_nodes.get(self.method)
        if node is not None:
            self.bridge.apply_map_style(node, self.style(self.method), self.scene)
        self.bridge.show_overlay(self.ct_node, node, self.opacity, self.scene)

    def legend(self) -> str:
        if self.method is None:
            return ""
        style = self.style(self.method)
        low, high = style.window
        return f"{style.title}\n{style.subtitle}\ncolour scale {low:.3g} to {high:.3g} ({style.scale})"


def new_work_dir() -> tempfile.TemporaryDirectory:
    """A private folder for the scene files (outside the results folder, removed when the server stops)."""
    return tempfile.TemporaryDirectory(prefix="segxai-review-")
