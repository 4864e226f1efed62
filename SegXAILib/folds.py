"""Cross-validation the way the papers measure: leave-one-patient-out and cross-dataset folds.

A fold trains a fresh model with :func:`training.train` on some cases of a config and scores the others
with :func:`evaluation.evaluate`; no case a fold is scored on is ever seen by its model. Each fold writes
``<out>/<fold>/model/`` and ``<out>/<fold>/evaluation.json``, so folds can run in separate processes (two
CPU cores, two folds) and a finished fold is never trained again.
"""
from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import SegXAIError
from .evaluation import evaluate
from .models.store import load_model
from .training import TrainConfig, recipe_of, train, validate_config
from .volume import write_json_atomic

SCHEMES = ("lopo", "cross-dataset")


@dataclass
class Fold:
    """One experiment: train on ``train`` case ids, score on ``test`` case ids."""

    name: str
    scheme: str
    train: list
    test: list


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def make_folds(cfg: TrainConfig, scheme: str) -> list:
    """``lopo``: one fold per patient left out. ``cross-dataset``: train on one source, test on all the others."""
    if scheme not in SCHEMES:
        raise SegXAIError(f"unknown fold scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    key = "patient" if scheme == "lopo" else "dataset"
    by_value: dict = {}
    for case in cfg.cases:
        value = str(case.meta.get(key) or case.id)
        by_value.setdefault(value, []).append(case.id)
    if len(by_value) < 2:
        raise SegXAIError(f"{scheme} needs cases from at least two {key}s; the config has {list(by_value)}")
    folds = []
    all_ids = [c.id for c in cfg.cases]
    for value, ids in by_value.items():
        others = [i for i in all_ids if i not in ids]
        if scheme == "lopo":
            folds.append(Fold(f"lopo-{_slug(value)}", scheme, others, ids))
        else:
            folds.append(Fold(f"from-{_slug(value)}", scheme, ids, others))
    return folds


def fold_config(cfg: TrainConfig, fold: Fold, steps: int | None = None) -> TrainConfig:
    """The config restricted to the fold's training cases, with no validation case (nothing is tuned on a test)."""
    sub = copy.deepcopy(cfg)
    sub.cases = [c for c in sub.cases if c.id in fold.train]  # the deep copies: the caller's config stays as it was
    sub.validation = []
    # a class no training case annotates could never be told from background: leave it out of this fold's model.
    # A class is taught when a case labels it alone, or first in a group (the host: liver in "liver or tumour").
    taught = {n for c in sub.cases for names in c.groups.values() for n in names if len(names) == 1 or n == names[0]}
    sub.classes = [n for n in cfg.classes if n in taught]
    for case in sub.cases:
        case.groups = {v: [n for n in names if n in taught] for v, names in case.groups.items()}
    sub.postprocessing = _postprocessing_for(cfg.postprocessing, sub.classes)
    sub.name = f"{cfg.name}-{fold.name}"
    if steps is not None:
        sub.train["steps"] = int(steps)
    validate_config(sub)
    return sub


def _postprocessing_for(post: dict, classes: list) -> dict:
    out = dict(post)
    if "largest_component" in out:
        out["largest_component"] = [n for n in out["largest_component"] if n in classes]
    if "inside" in out:
        out["inside"] = {k: v for k, v in out["inside"].items() if k in classes and v in classes}
    return out


def run_fold(cfg: TrainConfig, fold: Fold, out_dir: str | Path, device, steps: int | None = None,
             log: Callable[[str], None] = print, command: str = "") -> dict:
    """Train the fold's model (unless a finished one is there) and write its ``evaluation.json``."""
    folder = Path(out_dir) / fold.name
    model_dir = folder / "model"
    sub = fold_config(cfg, fold, steps)
    card_path = model_dir / "card.json"
    started = time.time()
    finished = card_path.exists() and json.loads(card_path.read_text()).get("training", {}).get("finished")
    if finished:
        log(f"{fold.name}: using the finished model in {model_dir}")
    else:
        log(f"{fold.name}: training on {', '.join(fold.train)} for {sub.train['steps']} steps")
        train(sub, model_dir, device, log=log, command=command)
    model = load_model(model_dir)
    test_cases = [c for c in cfg.cases if c.id in fold.test]
    results = evaluate(test_cases, model, device, log=log)
    record = {
        "fold": fold.name,
        "scheme": fold.scheme,
        "model": cfg.name,
        "architecture": cfg.architecture,
        "train": fold.train,
        "test": fold.test,
        "steps": sub.train["steps"],
        "training_minutes": model.card.training.get("minutes"),
        "device": model.card.training.get("device"),
        "precision": model.card.training.get("precision", "fp32"),
        "settings": model.card.training.get("settings"),
        "seconds": round(time.time() - started, 1),
        "results": results,
    }
    write_json_atomic(record, folder / "evaluation.json", overwrite=True)
    return record


def collect(folders: list) -> list:
    """Every finished fold's record under the given crossval output folders."""
    records = []
    for root in folders:
        for path in sorted(Path(root).glob("*/evaluation.json")):
            record = json.loads(path.read_text())
            card = path.parent / "model" / "card.json"
            if record.get("settings") is None and card.exists():  # a record from before folds kept their settings
                record["settings"] = json.loads(card.read_text()).get("training", {}).get("settings")
            records.append(record)
    return records


def same_recipe(a: dict | None, b: dict | None) -> bool:
    """Two training settings describe one recipe when all but the step budget, the precision and the seed agree."""
    if a is None or b is None:
        return False
    return recipe_of(a) == recipe_of(b)


def _cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "∞"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(records: list, no_volume: tuple = ()) -> str:
    """One row per (scheme, fold, training steps, seed, test case, class), one column group per model, in the order given."""
    models = list(dict.fromkeys(r["model"] for r in records))
    index: dict = {}
    for r in records:
        for res in r["results"]:
            for cls, m in res["classes"].items():
                key = (r["scheme"], r["fold"], r["steps"], seed_of(r), res["case"], res.get("patient", ""), cls)
                index.setdefault(key, {})[r["model"]] = (m, r)
    head = ["scheme", "fold (trained on)", "steps", "seed", "test patient", "class"]
    for name in models:
        head += [f"{name} Dice", "IoU", "sens", "prec", "HD95 mm", "vol err mL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (scheme, fold, steps, seed, case, patient, cls), per_model in index.items():
        trained = next(iter(per_model.values()))[1]["train"]
        row = [scheme, f"{fold} ({', '.join(trained)})", str(steps), str(seed), f"{patient} ({case})" if patient else case, cls]
        for name in models:
            if name not in per_model:
                row += ["–"] * 6
                continue
            m = per_model[name][0]
            vol = "n/a" if case in no_volume else _cell(m.get("volume_error_ml"), 1)
            row += [_cell(m["dice"]), _cell(m["iou"]), _cell(m["sensitivity"]), _cell(m["precision"]), _cell(m["hd95_mm"], 1), vol]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def seed_of(record: dict) -> int:
    """The seed a fold ran with (records from before folds kept their settings ran with the default, 0)."""
    return int((record.get("settings") or {}).get("seed", 0))


def _fold_key(fold: dict) -> tuple:
    """Which run a card's fold entry is: rerunning the same fold, budget, precision and seed replaces it."""
    return fold["scheme"], fold["fold"], fold["steps"], fold.get("precision", "fp32"), fold["seed"]


def attach_to_card(records: list, card_path: str | Path) -> int:
    """Write the folds run with this card's recipe into its ``metrics.crossval``; returns how many.

    Folds already in the card from earlier runs of the same recipe stay (their folders may be gone); a fold
    rerun with the same budget, precision and seed replaces its entry. Entries written under another recipe go.
    """
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    settings = card.get("training", {}).get("settings")
    named = [r for r in records if r["model"] == card["name"]]
    mine = [r for r in named if same_recipe(r.get("settings"), settings)]
    if not mine:
        other = f" ({len(named)} ran an earlier recipe of it: other training settings)" if named else ""
        raise SegXAIError(f"no fold under the given folders was run with {card['name']}'s config{other}")
    keep = ("dice", "iou", "sensitivity", "precision", "hd95_mm", "volume_error_ml")
    written = [{"fold": r["fold"], "scheme": r["scheme"], "train": r["train"], "test": r["test"], "steps": r["steps"],
                "training_minutes": r["training_minutes"], "device": r["device"],
                "precision": r.get("precision", "fp32"), "seed": seed_of(r),
                "results": {res["case"]: {cls: {k: m[k] for k in keep if k in m} for cls, m in res["classes"].items()}
                            for res in r["results"]}} for r in mine]
    before = card.get("metrics", {}).get("crossval", {})
    recipe = json.loads(json.dumps(recipe_of(settings))) if settings is not None else None  # as a card stores it
    # entries from before cards named their recipe were written through the same filter, so they stay; that
    # filter also held the seed to the card's, which is how an entry from before seeds were recorded gets one
    earlier = before.get("folds", []) if before.get("recipe", recipe) == recipe else []
    earlier = [dict(f, seed=f.get("seed", (settings or {}).get("seed", 0))) for f in earlier]
    new_keys = {_fold_key(f) for f in written}
    card.setdefault("metrics", {})["crossval"] = {
        "what": "the same architecture, input and training settings retrained per fold, then scored on the cases "
                "it never saw; fold models are not the bundled weights (see steps)",
        "recipe": recipe,
        "folds": [f for f in earlier if _fold_key(f) not in new_keys] + written,
    }
    write_json_atomic(card, card_path, overwrite=True)
    return len(mine)
