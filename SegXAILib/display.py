"""How a SegXAI map and a segment look: colour map, window, threshold, transparency, legend text, common scale.

One place for every display decision, so the Slicer scene (:mod:`SegXAILib.scene`) and the browser review
draw the same map the same way. Pure numpy: no ``slicer``, ``vtk`` or ``torch``.

Why the transparency is made the way it is (measured on Slicer's own slice views, ``Testing/test_render.py``):
Slicer's scalar-volume display (``vtkMRMLScalarVolumeDisplayNode``) ANDs the colour table's alpha with its
threshold mask, so a colour entry is either invisible (alpha exactly 0) or drawn at the layer's opacity; a
soft alpha ramp does not fade anything. Non-negative maps hide faint values with the display threshold;
signed maps hide the band around zero through colour entries whose alpha is exactly 0 (one threshold range
cannot hide the middle of a two-sided map).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

#: opacity of the map layer over the CT in slice views
DEFAULT_OPACITY = 0.4
#: faint part of a map that is not drawn: below this fraction of the window top (|value| for signed maps)
FAINT = 0.1
#: robust window: percentiles of the non-zero values (outliers must not set the window)
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.5
#: number of entries of SegXAI's colour tables
COLORS = 256
#: scale choices: one window per method family (comparable across methods), or one per map
SCALES = ("family", "map")


@dataclass(frozen=True)
class MethodInfo:
    """What a method's values are: plain name, family (maps of one family share a scale), sign, unit."""

    title: str
    family: str
    signed: bool
    unit: str
    uses_layer: bool = True  # the CAMs read one layer; IG and LRP explain the input, so no layer is named


#: the explanation methods SegXAI knows (names as in ``segxai explain --methods``)
METHODS = {
    "gradcam": MethodInfo("Grad-CAM", "cam", False, "activation (a.u.)"),
    "hirescam": MethodInfo("HiResCAM", "cam", False, "activation (a.u.)"),
    "gradcampp": MethodInfo("Grad-CAM++", "cam", False, "activation (a.u.)"),
    # IG and LRP both add up to the target score, yet their voxel values differ tenfold on the bundled sample
    # (99.5th percentile of |value| 6.9 against 69): one shared window would hide IG, so each is its own family
    "ig": MethodInfo("Integrated Gradients", "ig", True, "target-score units", uses_layer=False),
    "lrp": MethodInfo("LRP", "lrp", True, "target-score units", uses_layer=False),
    # occlusion: the drop of the target score when a patch is occluded; SmoothGrad: its inner method's units
    "occlusion": MethodInfo("Occlusion", "occlusion", True, "target-score drop", uses_layer=False),
    "smoothgrad": MethodInfo("SmoothGrad", "smoothgrad", True, "target-score units", uses_layer=False),
}


def method_info(method: str, signed: Optional[bool] = None) -> MethodInfo:
    """The method's description; an unknown method gets its own name, its own family and the given sign."""
    info = METHODS.get(str(method).lower())
    if info is None:
        return MethodInfo(str(method), str(method), bool(signed), "value (a.u.)")
    if signed is not None and bool(signed) != info.signed:
        return MethodInfo(info.title, info.family, bool(signed), info.unit, info.uses_layer)
    return info


# ---- colour maps --------------------------------------------------------------------------------
# Control points of matplotlib's inferno (CC0), enough for a faithful linear interpolation.
_INFERNO = [
    (0.000, (0.001, 0.000, 0.014)), (0.125, (0.116, 0.042, 0.281)), (0.250, (0.258, 0.039, 0.406)),
    (0.375, (0.416, 0.090, 0.433)), (0.500, (0.578, 0.148, 0.404)), (0.625, (0.735, 0.216, 0.330)),
    (0.750, (0.865, 0.317, 0.226)), (0.875, (0.954, 0.469, 0.100)), (1.000, (0.988, 0.998, 0.645)),
]
# Signed maps, "cold-hot" as in fMRI overlays: negative blue -> cyan at the strongest, positive red -> yellow.
# No white or grey near zero: the weakest drawn values are saturated blue/red, never mistaken for CT tissue.
_DIVERGING = [(0.0, (0.0, 1.0, 1.0)), (0.4999, (0.0, 0.15, 1.0)), (0.5001, (1.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 0.0))]
COLORMAPS = {"inferno": _INFERNO, "diverging": _DIVERGING}
#: names of SegXAI's colour-table nodes in a scene
COLORMAP_NODE_NAMES = {"inferno": "SegXAI Inferno", "diverging": "SegXAI Diverging"}


def colormap_rgba(name: str, n: int = COLORS, clear_band: float = 0.0) -> np.ndarray:
    """(n, 4) RGBA in [0, 1] of colour map ``name``; entries within ``clear_band`` of the centre get alpha 0.

    ``clear_band`` is a fraction of the half range: 0.1 hides the entries whose value lies within 10 % of
    the window's half width from its centre (zero, for a window symmetric about zero). All other entries are
    opaque, since Slicer draws any non-zero alpha fully (see the module docstring).
    """
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    points = COLORMAPS[name]
    pos = np.array([p for p, _ in points])
    rgb = np.array([c for _, c in points])
    x = np.linspace(0.0, 1.0, n)
    colors = np.stack([np.interp(x, pos, rgb[:, i]) for i in range(3)] + [np.ones(n)], axis=1)
    if clear_band > 0:
        # entry i covers values mapped to [i/n, (i+1)/n) of the window; clear it if it lies inside the band
        lo, hi = np.arange(n) / n, np.arange(1, n + 1) / n
        inside = (lo >= 0.5 - clear_band / 2) & (hi <= 0.5 + clear_band / 2)
        colors[inside, 3] = 0.0
    return colors


# ---- window and threshold -----------------------------------------------------------------------
def robust_range(array, signed: bool, low_pct: float = LOW_PERCENTILE, high_pct: float = HIGH_PERCENTILE) -> tuple:
    """(low, high) of a map's non-zero finite values: percentiles, so a few outliers do not set the window.

    Signed maps: (-top, top) with top the ``high_pct`` percentile of |values| (zero at the colour map's centre).
    """
    values = np.asarray(array, dtype=np.float64)
    values = values[np.isfinite(values) & (values != 0)]
    if signed:
        if values.size == 0:
            return -1.0, 1.0
        top = float(np.percentile(np.abs(values), high_pct)) or float(np.abs(values).max())
        return -top, top
    values = values[values > 0]
    if values.size == 0:
        return 0.0, 1.0
    high = float(np.percentile(values, high_pct)) or float(values.max())
    low = min(float(np.percentile(values, low_pct)), high * 0.999)
    return low, high


def common_windows(maps: Iterable, scale: str = "family") -> dict:
    """One window per map name from ``(name, method, array, signed)`` items.

    ``scale="family"``: maps of one method family (the CAMs) share the widest robust range among
    them, so equal colours mean equal values across methods. ``scale="map"``: each map its own range.
    Raw values stay in the volumes either way; only the display window changes.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    items = [(name, method_info(method, signed), robust_range(array, signed)) for name, method, array, signed in maps]
    if scale == "map":
        return {name: window for name, _, window in items}
    families = {}
    for _, info, (low, high) in items:
        key = (info.family, info.signed)
        old = families.get(key)
        families[key] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
    return {name: families[(info.family, info.signed)] for name, info, _ in items}


# ---- legend text --------------------------------------------------------------------------------
def legend_title(method: str, target_class: Optional[str] = None, signed: Optional[bool] = None) -> str:
    """The legend's first line: method and class in plain words, e.g. 'Grad-CAM: liver'."""
    title = method_info(method, signed).title
    return f"{title}: {target_class}" if target_class else title


def legend_subtitle(method: str, region: Optional[str] = None, layer: Optional[str] = None,
                    signed: Optional[bool] = None) -> str:
    """The legend's next lines: the unit, then region and layer (what the map explains, where it was read)."""
    where = []
    if region:
        where.append(f"region {region}")
    if layer and method_info(method, signed).uses_layer:
        where.append(f"layer {layer}")
    return "\n".join([method_info(method, signed).unit] + ([", ".join(where)] if where else []))


def description(method: str, target_class=None, region=None, layer=None, model=None, signed=None, scale=None) -> str:
    """One sentence for a map node's description: what it explains, with which model, on which scale."""
    info = method_info(method, signed)
    text = f"{info.title} explanation of '{target_class or 'the default class'}'"
    if region:
        text += f" over the {region} region"
    if layer and info.uses_layer:
        text += f", read at layer {layer}"
    if model:
        text += f", model {model}"
    text += f". Values: {info.unit}"
    text += "; negative (blue to cyan) lowers the class score, positive (red to yellow) raises it" if info.signed else ""
    if scale:
        text += f". Colour scale: {scale}"
    return text + "."


# ---- the style of one map -----------------------------------------------------------------------
@dataclass(frozen=True)
class MapStyle:
    """Everything a viewer needs to draw one map: colours, window, what is hidden, opacity, legend text."""

    method: str
    signed: bool
    colormap: str                     # key of COLORMAPS
    window: tuple                     # (min, max) mapped to the colour map's ends
    threshold: Optional[tuple]        # (lower, upper) drawn range for non-negative maps; None for signed
    clear_band: float                 # signed maps: fraction of the half window around zero not drawn
    opacity: float
    title: str
    subtitle: str
    scale: str
    label_format: str = "%.3g"

    def hidden(self, values) -> np.ndarray:
        """True where a value is not drawn (the CT shows through unchanged)."""
        v = np.asarray(values, dtype=np.float64)
        if self.signed:
            half = (self.window[1] - self.window[0]) / 2
            centre = (self.window[1] + self.window[0]) / 2
            return np.abs(v - centre) < self.clear_band * half
        return (v < self.threshold[0]) | (v > self.threshold[1])


def map_style(array, method: str, signed: Optional[bool] = None, target_class=None, region=None, layer=None,
              window: Optional[tuple] = None, scale: str = "map", opacity: float = DEFAULT_OPACITY,
              faint: float = FAINT) -> MapStyle:
    """How to draw one map: ``window`` from :func:`common_windows` (default: the map's own robust range)."""
    info = method_info(method, signed)
    low, high = window if window is not None else robust_range(array, info.signed)
    if info.signed:
        top = max(abs(low), abs(high))
        return MapStyle(method, True, "diverging", (-top, top), None, faint,
                        float(opacity), legend_title(method, target_class, True),
                        legend_subtitle(method, region, layer, True), scale)
    values = np.asarray(array)
    upper = max(float(np.nanmax(values)) if values.size else high, high) + abs(high) + 1.0
    return MapStyle(method, False, "inferno", (low, high), (faint * high, upper), 0.0, float(opacity),
                    legend_title(method, target_class, False), legend_subtitle(method, region, layer, False), scale)


# ---- segments -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentStyle:
    """How segments are drawn: outlines in slice views (a fill would tint the map under them), surface in 3D."""

    fill_2d: bool = False
    outline_2d: bool = True
    outline_width: int = 2
    opacity_3d: float = 1.0
    closed_surface: bool = True


SEGMENTS = SegmentStyle()
#: a reference segmentation's outline (white: apart from every class colour and from both map colour maps)
REFERENCE_COLOR = (255, 255, 255)


# ---- which classes a model card vouches for ---------------------------------------------------------
#: a class counts as learned when some measurement in its card found it (Dice above this)
MIN_LEARNED_DICE = 0.0


def class_evidence(metrics: Optional[dict]) -> dict:
    """Best Dice per class name over every case measured in a card's ``metrics`` (training cases, held-out
    cases, cross-validation folds). Keys such as 'liver+liver tumor' (labels merged in the reference) are
    left out: they do not say whether one class alone was learned."""
    best = {}

    def visit(per_class):
        for name, scores in (per_class or {}).items():
            if not isinstance(scores, dict) or "dice" not in scores or "+" in name or " incl. " in name:
                continue
            dice = scores.get("dice")
            dice = float(dice) if isinstance(dice, (int, float)) else 0.0
            best[name.lower()] = max(best.get(name.lower(), 0.0), dice)

    metrics = metrics or {}
    for group in ("training_cases_not_a_test", "held_out"):
        for case in (metrics.get(group) or {}).values():
            if isinstance(case, dict):
                visit(case)
    for key, crossval in metrics.items():
        if key.startswith("crossval") and isinstance(crossval, dict):
            for fold in crossval.get("folds") or []:
                for case in (fold.get("results") or {}).values():
                    visit(case)
    return best


def shown_classes(classes: list, metrics: Optional[dict]) -> list:
    """The classes to draw: those the card measured and found (best Dice > MIN_LEARNED_DICE).

    A card without measurements vouches for nothing and hides nothing: every class is shown. A measured
    class never found (e.g. an organ at 0 mL on every patient) is hidden; one the card never measured while
    it measured others is hidden too. Background (value 0) is never a segment.
    """
    evidence = class_evidence(metrics)
    foreground = [c for c in classes if c.value != 0]
    if not evidence:
        return foreground
    return [c for c in foreground if evidence.get(c.name.lower(), 0.0) > MIN_LEARNED_DICE]


def hidden_classes(classes: list, metrics: Optional[dict]) -> list:
    """Names of the foreground classes :func:`shown_classes` leaves out (for provenance and messages)."""
    shown = {c.name for c in shown_classes(classes, metrics)}
    return [c.name for c in classes if c.value != 0 and c.name not in shown]


def card_metrics(card_path) -> dict:
    """The ``metrics`` of a model card file (what it measured per class; {} when absent or unreadable).

    Reads the JSON only, so Slicer's module can decide which classes to show without importing torch.
    """
    import json
    from pathlib import Path

    try:
        card = json.loads(Path(card_path).read_text())
    except (OSError, ValueError):
        return {}
    metrics = card.get("metrics") if isinstance(card, dict) else None
    return metrics if isinstance(metrics, dict) else {}
