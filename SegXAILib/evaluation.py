"""Evaluate a model against reference labels: per case and per class, the metrics of :mod:`metrics`.

Cases come from a training config (each case says which of its label values mean which classes, so
partially labelled data is scored only on what it annotates) or from two folders of matching file names
(reference value n = model class value n).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .error_components import describe, error_components
from .metrics import mask_metrics
from .models.store import LoadedModel
from .pipeline import segment
from .preprocessing import labels_on_grid
from .training import Case
from .volume import partial_path, refuse_overwrite, write_json_atomic

COLUMNS = ["dice", "iou", "sensitivity", "specificity", "precision", "accuracy", "hd95_mm", "volume_pred_ml", "volume_ref_ml", "volume_error_ml"]


def evaluate_case(case: Case, model: LoadedModel, device="auto", progress=None) -> dict:
    """Segment one case and score every class group it annotates (plus organ-with-lesion unions)."""
    volume, reference = case.read()
    result = segment(volume, model, device, progress=progress, name=str(case.image))
    value = {c.name: c.value for c in model.card.classes}
    pred, ref = result.labels.array, labels_on_grid(reference, volume.grid)
    spacing_kji = volume.spacing[::-1]
    rows = {}
    groups = {}
    for source_value, names in sorted(case.groups.items()):
        key = "+".join(names)
        groups.setdefault(key, ([value[n] for n in names if n in value], []))[1].append(source_value)
    # an organ scored with its lesions when the case labels them apart (liver Dice as LiTS counts it); the
    # lesion's reference still counts when the model has no lesion class (a fold trained without tumours)
    lesions = dict(model.card.postprocessing.get("inside", {}), **{"liver tumor": "liver"})
    for lesion, host in lesions.items():
        if host in groups and lesion in groups and value.get(host) is not None:
            groups[f"{host} incl. {lesion}"] = (groups[host][0] + groups[lesion][0], groups[host][1] + groups[lesion][1])
    # the model has none of a group's classes (a fold trained without them): nothing to score there
    groups = {k: v for k, v in groups.items() if v[0]}
    for key, (pred_values, ref_values) in groups.items():
        pred_mask, ref_mask = np.isin(pred, pred_values), np.isin(ref, ref_values)
        rows[key] = mask_metrics(pred_mask, ref_mask, spacing_kji, volume.voxel_volume_ml)
        rows[key]["errors"] = error_components(pred_mask, ref_mask, volume)
    return {"case": case.id, "patient": case.meta.get("patient", ""), "source": case.meta.get("source", ""),
            "seconds": round(result.seconds["total"], 2), "classes": rows}


def evaluate(cases: list, model: LoadedModel, device="auto", log: Callable[[str], None] = print, progress: Optional[Callable] = None) -> list:
    results = []
    for case in cases:
        log(f"evaluating {case.id} ({case.image})")
        results.append(evaluate_case(case, model, device, progress))
    return results


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def table(results: list) -> str:
    """A plain-text table: one row per case and class."""
    head = ["case", "class", "dice", "iou", "sens", "spec", "prec", "hd95mm", "vol_ml", "ref_ml"]
    rows = [head]
    for r in results:
        for name, m in r["classes"].items():
            rows.append([r["case"], name] + [_fmt(m[k]) for k in ("dice", "iou", "sensitivity", "specificity", "precision", "hd95_mm", "volume_pred_ml", "volume_ref_ml")])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def errors_text(results: list) -> str:
    """The largest false-positive and missed regions per case and class, indented under their case and class."""
    lines = []
    for r in results:
        for name, m in r["classes"].items():
            if m.get("errors"):
                lines.append(f"{r['case']} {name}:")
                lines += ["  " + line for line in describe(m["errors"]).splitlines()]
    return "\n".join(lines)


def write_reports(results: list, out_dir: str | Path, model_name: str, overwrite: bool = False) -> dict:
    """``evaluation.csv`` (one row per case and class) and ``evaluation.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "evaluation.csv", out_dir / "evaluation.json"
    for p in (csv_path, json_path):
        refuse_overwrite(p, overwrite)
    tmp = partial_path(csv_path)
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "case", "patient", "class"] + COLUMNS)
            for r in results:
                for name, m in r["classes"].items():
                    w.writerow([model_name, r["case"], r["patient"], name] + [m.get(k, "") for k in COLUMNS])
        os.replace(tmp, csv_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_json_atomic({"model": model_name, "cases": results}, json_path, overwrite)
    return {"csv": csv_path, "json": json_path}


def attach_to_card(results: list, card_path: str | Path, command: str) -> dict:
    """Write these figures into a model card's ``metrics``, each case where it belongs.

    A case the model was trained on goes under ``training_cases_not_a_test``, any other under ``held_out``, so
    a card never calls a training patient a test. Returns the new ``metrics``.
    """
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    trained = {c.get("id") for c in card.get("training", {}).get("cases", [])}

    def rounded(classes: dict) -> dict:
        return {name: {k: (round(m[k], 4) if isinstance(m.get(k), float) and math.isfinite(m[k]) else m.get(k))
                       for k in COLUMNS if k in m} for name, m in classes.items()}

    held = [r for r in results if r["case"] not in trained]
    seen = [r for r in results if r["case"] in trained]
    metrics = card.setdefault("metrics", {})
    metrics["evaluated_with"] = command
    metrics["resolution"] = "input grid, after post-processing; reference labels as listed per case"
    if held:
        metrics["held_out"] = {"patients": ", ".join(f"{r['patient'] or r['case']} ({r['case']})" for r in held),
                               "cases": {r["case"]: rounded(r["classes"]) for r in held}}
    else:
        patients = ", ".join(r["patient"] or r["case"] for r in seen)
        metrics["held_out"] = {"patients": f"none: every evaluated patient ({patients}) is a training patient of this "
                                           "model. How the recipe does on a patient it never saw is in crossval "
                                           "(leave-one-patient-out and cross-dataset folds)."}
    if seen:
        metrics["training_cases_not_a_test"] = {r["case"]: rounded(r["classes"]) for r in seen}
    else:
        metrics.pop("training_cases_not_a_test", None)
    write_json_atomic(card, card_path, overwrite=True)
    return metrics
