"""Plain names for the explanation scores in a report, a line on what a good value is, and the scores table.

A map's metadata holds ``scores`` (the report's ``quality``: flat numbers and the nested ``curves`` of the
deletion/insertion test) and ``checks`` (completeness / conservation errors). :func:`scores_rows` flattens both
into one row per map, keyed by plain names, so a radiologist reads "Deletion AUC" instead of ``curves.deletion_auc``.
"""
from __future__ import annotations

import math

#: score key (the last part of a dotted key) → (plain name, what a good value is)
LABELS = {
    "energy_inside": ("Relevance inside the target", "higher is better: share of the positive relevance inside the explained region (0–1)"),
    "relevance_mass_accuracy": ("Relevance mass in the target", "higher is better: share of all relevance inside the explained region (0–1)"),
    "relevance_rank_accuracy": ("Relevance rank in the target", "higher is better: share of the region's voxels among the most relevant ones (0–1)"),
    "pointing_game": ("Peak inside the target", "1 is good: the map's largest value lies inside the explained region"),
    "deletion_auc": ("Deletion AUC", "lower is better: the prediction drops fast when the most relevant voxels are removed first"),
    "insertion_auc": ("Insertion AUC", "higher is better: the prediction recovers fast when the most relevant voxels are put back first"),
    "deletion_auc_normalised": ("Deletion AUC (normalised)", "lower is better: 0 = the prediction is gone at once, 1 = it never drops"),
    "insertion_auc_normalised": ("Insertion AUC (normalised)", "higher is better: 1 = the prediction is back at once, 0 = never"),
    "dynamic_range": ("Score range of the deletion test", "informative: the prediction with the voxels present minus with all removed; near 0 makes the AUCs meaningless"),
    "score_removed": ("Score with the region removed", "near 0 is good: the removal baseline really takes the information away (else the deletion curves say little)"),
    "road_score_removed": ("ROAD score with the region imputed", "near 0 is good: the imputation really takes the information away"),
    "road_morf_auc": ("ROAD, most relevant first (AUC)", "lower is better: imputing the most relevant voxels first (noisy linear imputation) lowers the prediction fast"),
    "road_lerf_auc": ("ROAD, least relevant first (AUC)", "higher is better: imputing the least relevant voxels first barely changes the prediction"),
    "road_dynamic_range": ("ROAD score range", "larger is better: the prediction with nothing imputed minus with the whole region imputed; near 0 the ROAD curves say nothing"),
    "morf_auc": ("ROAD, most relevant first (AUC)", "lower is better: removing the most relevant voxels (noisy linear imputation) lowers the prediction fast"),
    "lerf_auc": ("ROAD, least relevant first (AUC)", "higher is better: removing the least relevant voxels first barely changes the prediction"),
    "faithfulness_correlation": ("Faithfulness correlation", "higher is better: removing voxels with more relevance lowers the prediction more (−1 to 1)"),
    "randomisation_spearman": ("Similarity after randomising the model (rank)", "near 0 is good: the map changes when the model's weights are randomised (sanity check)"),
    "randomisation_ssim": ("Similarity after randomising the model (SSIM)", "near 0 is good: the map changes when the model's weights are randomised (sanity check)"),
    "randomisation_spearman_abs": ("Similarity after randomising the model (rank, |map|)", "near 0 is good: the map's magnitudes change when the model's weights are randomised"),
    "randomisation_ssim_abs": ("Similarity after randomising the model (SSIM, |map|)", "near 0 is good: the map's magnitudes change when the model's weights are randomised"),
    "completeness_error": ("Completeness error", "near 0 is good: the attributions add up to the change in the model's output"),
    "conservation_error": ("Conservation error", "near 0 is good: LRP relevance is conserved from output to input"),
    "gini_sparseness": ("Sparseness (Gini)", "higher means a more focused map (0 = spread evenly, 1 = a single voxel)"),
    "sparseness": ("Sparseness (Gini)", "higher means a more focused map (0 = spread evenly, 1 = a single voxel)"),
    "entropy_complexity": ("Complexity (entropy)", "lower means a simpler, more focused map"),
    "complexity": ("Complexity (entropy)", "lower means a simpler, more focused map"),
}

#: keys that describe a run rather than score it (curves, counts, settings): not shown as scores
NOT_SCORES = ("fractions", "deletion", "insertion", "totals", "seconds", "morf", "lerf", "morf_fractions",
              "lerf_fractions", "steps", "layers", "runs", "subset_units", "voxels", "score_original",
              "mask_fraction", "pointing_game_tolerance_mm", "localisation_against",
              "body_score_original", "curve_fractions", "body_curve_fractions", "road_fractions")
#: a key with this prefix is the same score measured over the whole body instead of the target region
BODY_PREFIX = "body_"


def _label(key: str):
    leaf = key.rsplit(".", 1)[-1]
    found = LABELS.get(key) or LABELS.get(leaf)
    if found is None and leaf.startswith(BODY_PREFIX) and leaf[len(BODY_PREFIX):] in LABELS:
        name, good = LABELS[leaf[len(BODY_PREFIX):]]
        return f"{name}, whole body", good.replace("the explained region", "the body")
    return found


def plain_name(key: str) -> str:
    """The plain name of a score key (by its last part: "curves.deletion_auc" → "Deletion AUC"); an unknown key
    becomes words ("foo_bar.baz_auc" → "Foo bar baz AUC")."""
    if _label(key):
        return _label(key)[0]
    words = key.replace(".", " ").replace("_", " ").split()
    text = " ".join("AUC" if w.lower() == "auc" else w for w in words)
    return text[:1].upper() + text[1:]


def what_is_good(key: str) -> str:
    """One line on what a good value of ``key`` is ("" when the score is not known here)."""
    return (_label(key) or ("", ""))[1]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def flatten_scores(metadata: dict) -> dict:
    """``{dotted key: number}`` from a map's ``scores`` (nested dicts included) and its ``checks``.

    Yes/no scores become 1 / 0; lists (the curves themselves), the ``totals`` behind the checks, and missing
    (None) or non-finite values are left out.
    """
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key) in NOT_SCORES:
                    continue
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif _is_number(value):  # a yes/no score (pointing game) reads 1 / 0
            out[prefix] = int(value) if isinstance(value, bool) else value

    walk("", metadata.get("scores") or {})
    checks = {k: v for k, v in (metadata.get("checks") or {}).items() if k not in NOT_SCORES}
    walk("checks", checks)
    return out


def scores_rows(maps: list) -> list:
    """One table row per map ``(name, Volume, metadata, signed)``: method, layer, then each score by plain name."""
    rows = []
    for name, _, meta, signed in maps:
        meta = meta or {}
        row = {"Map": name, "Method": meta.get("method", name), "Layer": meta.get("layer", "") or "",
               "Signed": bool(signed)}
        for key, value in flatten_scores(meta).items():
            row[plain_name(key)] = value
        rows.append(row)
    return rows


def legend_rows(rows: list) -> list:
    """``[(plain name, what is good)]`` for the score columns that appear in ``rows`` (for the panel's tooltip)."""
    names = {label: key for key, (label, _) in LABELS.items()}
    seen = []
    for row in rows:
        for column in row:
            if column in names and column not in seen:
                seen.append(column)
    return [(column, what_is_good(names[column])) for column in seen]
