"""The deletion and insertion curves of a review case as an SVG drawn from the report's numbers (not a picture of
them): every method and both controls, the shown method in colour and on top, each point's value on hover.

Deletion: the score as the map's highest-ranked voxels are removed (a faithful map makes it fall fast: low area is
good); insertion: as they are put back into the removed image (rises fast: high area is good).
"""
from __future__ import annotations

from html import escape

from .. import display as look

CURVES = (("deletion", "Deletion: score as the top-ranked voxels are removed (lower area is better)"),
          ("insertion", "Insertion: score as the top-ranked voxels are put back (higher area is better)"))
SHOWN_COLOUR, OTHER_COLOUR, CONTROL_COLOUR = "#d95f02", "#9e9e9e", "#616161"


def curves_of(report: dict) -> dict:
    """``{name: {fractions, deletion, insertion, deletion_auc, insertion_auc, control}}`` of every method and
    control of a ``segxai explain`` report that has curves (an empty dict when it was run with --no-quality)."""
    out = {}
    sources = [(m, (e or {}).get("quality") or {}, False) for m, e in (report.get("methods") or {}).items()]
    sources += [(f"control: {n}", c or {}, True) for n, c in (report.get("controls") or {}).items()]
    for name, scores, control in sources:
        fractions = scores.get("curve_fractions")
        if not isinstance(fractions, list) or not fractions:
            continue
        curve = {"fractions": [float(f) for f in fractions], "control": control}
        for kind, _ in CURVES:
            values = scores.get(f"{kind}_curve")
            if isinstance(values, list) and len(values) == len(fractions):
                curve[kind] = [float(v) for v in values]
                curve[f"{kind}_auc"] = scores.get(f"{kind}_auc")
        if any(kind in curve for kind, _ in CURVES):
            out[name] = curve
    return out


def title_of(name: str) -> str:
    return name if name.startswith("control: ") else look.method_info(name).title


def plot_svg(curves: dict, shown: str, kind: str, width: int = 340, height: int = 140) -> str:
    """One curve kind of every method as an SVG; ``shown`` drawn last, thick and coloured, with hover points."""
    pad_left, pad_right, pad_top, pad_bottom = 38, 8, 8, 22
    named = [(n, c) for n, c in curves.items() if kind in c]
    if not named:
        return ""
    values = [v for _, c in named for v in c[kind] if v == v]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    inner_w, inner_h = width - pad_left - pad_right, height - pad_top - pad_bottom

    def x(f):
        return pad_left + inner_w * float(f)

    def y(v):
        return pad_top + inner_h * (1.0 - (float(v) - low) / (high - low))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="curve-plot" '
             f'data-kind="{kind}" data-low="{low:.6g}" data-high="{high:.6g}" style="font: 10px sans-serif">',
             f'<rect x="{pad_left}" y="{pad_top}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#ccc"/>']
    for f in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x(f):.1f}" y="{height - 8}" text-anchor="middle">{f:g}</text>')
    for v in (low, high):
        parts.append(f'<text x="{pad_left - 3}" y="{y(v) + 3:.1f}" text-anchor="end">{v:.2g}</text>')
    order = sorted(named, key=lambda item: item[0] == shown)  # the shown method on top
    for name, c in order:
        points = " ".join(f"{x(f):.2f},{y(v):.2f}" for f, v in zip(c["fractions"], c[kind]) if v == v)
        is_shown = name == shown
        colour = SHOWN_COLOUR if is_shown else (CONTROL_COLOUR if c["control"] else OTHER_COLOUR)
        dash = ' stroke-dasharray="4 3"' if c["control"] else ""
        auc = c.get(f"{kind}_auc")
        label = f"{title_of(name)}: area {auc:.3g}" if isinstance(auc, (int, float)) else title_of(name)
        parts.append(f'<polyline class="curve" data-method="{escape(name)}" points="{points}" fill="none" '
                     f'stroke="{colour}" stroke-width="{2.5 if is_shown else 1.2}"{dash}>'
                     f'<title>{escape(label)}</title></polyline>')
        if is_shown:
            for f, v in zip(c["fractions"], c[kind]):
                if v == v:
                    parts.append(f'<circle cx="{x(f):.2f}" cy="{y(v):.2f}" r="3.5" fill="{colour}">'
                                 f'<title>{escape(title_of(name))}: {f:.0%} of the ranked voxels, score {v:.3g}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def curves_html(curves: dict, shown: str) -> str:
    """Both plots with their captions and a legend naming the shown method, the others and the controls."""
    if not curves:
        return ""
    blocks = []
    for kind, caption in CURVES:
        svg = plot_svg(curves, shown, kind)
        if svg:
            blocks.append(f'<div class="curve-caption" style="font-size: 11px">{escape(caption)}</div>{svg}')
    legend = (f'<div style="font-size: 11px"><span style="color: {SHOWN_COLOUR}">━ {escape(title_of(shown))}</span> · '
              f'<span style="color: {OTHER_COLOUR}">━ other methods</span> · '
              f'<span style="color: {CONTROL_COLOUR}">╌ controls (random, edge map)</span></div>')
    return "".join(blocks) + legend
