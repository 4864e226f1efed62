"""The explanation-quality table: every method on every labelled patient, beside a random and an edge-detector map.

For each model × patient: the predicted liver is the target (class × region as `segxai explain` does by
default); every map is scored on the model grid with `quality.evaluate_map` against the *reference* liver
(energy and relevance mass inside it, rank accuracy), deletion/insertion AUC and ROAD over the predicted liver
(fat baseline, ranked voxels, seeded ties), and, with --cascade, Adebayo et al.'s cascading randomisation (in
--groups steps from the output side, Spearman on the union support at the last step). The controls get the same
scores; a method that does not beat both controls on a score is reported as failing it.
The bundled models were trained on all four patients: these are training patients (say so beside the figures).

    python bench/explanation_quality.py --out bench/results/explanation_quality.jsonl [--models ...] [--cases A,C]
    python bench/explanation_quality.py --table bench/results/explanation_quality.jsonl   # BENCHMARKS.md's tables
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SegXAILib.explainers import default_layer, make_explainer  # noqa: E402
from SegXAILib.explainers.tiling import explain_tiled  # noqa: E402
from SegXAILib.models.store import load_model  # noqa: E402
from SegXAILib.pipeline import segment  # noqa: E402
from SegXAILib.quality import (array_spacing, cascading_randomisation, control_maps, evaluate_map,  # noqa: E402
                               region_probability, removal_baseline)
from SegXAILib.training import load_config  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from layer_choice import CONFIG, reference_liver  # noqa: E402

#: score → True where higher is better (the direction a real method must beat the controls in)
HIGHER = {"energy_inside": True, "relevance_rank_accuracy": True, "deletion_auc": False, "insertion_auc": True,
          "road_morf_auc": False, "road_lerf_auc": True, "randomisation_spearman": False}


def maps_for(model, pre, liver, region, methods, layer, steps, seconds):
    """Each method's model-grid map of the predicted liver (and the seconds it took); the CAMs at ``layer`` share
    one forward/backward pass per window (``gradcam.layer_passes``), the rest run as ``segxai explain`` runs them."""
    from SegXAILib.explainers.gradcam import layer_passes
    from SegXAILib.explainers.ig import make_baseline
    from SegXAILib.explainers.tiling import Tiles

    out = {}
    net, card = model.network, model.card
    blur = make_baseline(pre.image, "blur")
    cams = [m for m in methods if make_explainer(m, layer).uses_layer and m != "smoothgrad"]
    if cams:
        t = time.perf_counter()
        tiles = Tiles(net, pre.image, liver, region, card.patch, card.overlap, "cpu")
        (acts, grads), score = (lambda p: (p[0][layer], p[1]))(layer_passes(tiles, [layer]))
        shared = time.perf_counter() - t
        for name in cams:
            t = time.perf_counter()
            padded, _ = make_explainer(name, layer).assemble(tiles, acts, grads, score)
            out[name] = tiles.crop(padded)
            seconds[name] = round(shared + time.perf_counter() - t, 1)
        del acts, grads
    for name in methods:
        if name in out:
            continue
        explainer = make_explainer(name, layer, steps)
        t = time.perf_counter()
        out[name], _ = explain_tiled(explainer, net, pre.image, liver, region, card.patch, card.overlap, "cpu",
                                     blur if name == "ig" else None, precision="fp32")
        seconds[name] = round(time.perf_counter() - t, 1)
    return out


ORDER = ("hirescam", "gradcam", "gradcampp", "ig", "lrp", "control:random", "control:edge")
CELLS = (("energy_inside", "energy"), ("relevance_rank_accuracy", "rank"), ("insertion_auc_normalised", "ins"),
         ("deletion_auc_normalised", "del"), ("road_morf_auc", "ROAD-MoRF"), ("randomisation_spearman", "rand"))


def markdown(path: str) -> str:
    """One table per model: per method and patient the scores measured (later rows of a file win), '–' if not run."""
    rows = [json.loads(line) for line in open(path)]
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["method"]), {}).setdefault(r["patient"], {}).update(
            {k: v for k, v in r.items() if v is not None})
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        patients = sorted({r["patient"] for r in rows if r["model"] == model})
        chance = {p: cells.get((model, "control:random"), {}).get(p, {}).get("mask_fraction") for p in patients}
        out.append(f"**{model}**: " + " / ".join(name for _, name in CELLS) + " (— not measured)\n")
        out.append("| method | " + " | ".join(patients) + " |")
        out.append("|---|" + "---|" * len(patients))
        out.append("| chance (liver's share of the grid) | " + " | ".join(
            f"{chance[p]:.3f}" if chance[p] is not None else "" for p in patients) + " |")
        for method in ORDER:
            line = []
            for p in patients:
                r = cells.get((model, method), {}).get(p, {})
                line.append(" / ".join(f"{r[k]:.2f}" if isinstance(r.get(k), (int, float)) and r[k] == r[k] else "—"
                                       for k, _ in CELLS))
            out.append(f"| {method} | " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="segxai-transunet-3mm,segxai-resunet-3mm")
    ap.add_argument("--cases", default="")
    ap.add_argument("--methods", default="gradcam,hirescam,gradcampp,ig,lrp")
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--curve-steps", type=int, default=10)
    ap.add_argument("--cascade", default="", help="methods to run the cascading randomisation for (costly)")
    ap.add_argument("--groups", type=int, default=3, help="cascading randomisation steps")
    ap.add_argument("--which", default="localisation,deletion_insertion,road", help="quality.evaluate_map score groups")
    ap.add_argument("--no-controls", action="store_true", help="leave the random and edge maps out (already measured)")
    ap.add_argument("--config", default="", help="the training config whose cases to use (default: the bundled "
                    "model's); with a fold model folder in --models, the config it was trained from")
    ap.add_argument("--layer", default="", help="the CAMs' layer (default: the card's measured one; a fold model's "
                    "card has none, so pass the bundled model's, e.g. decoder.2)")
    ap.add_argument("--label", default="", help="the model's name in the results (default: its card's name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--table", default="", help="print the Markdown tables of a results file and stop")
    args = ap.parse_args()
    if args.table:
        print(markdown(args.table))
        return 0
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    cascade = [m for m in args.cascade.split(",") if m]
    out = open(args.out, "a") if args.out else None
    for model_name in args.models.split(","):
        model = load_model(model_name, "cpu")
        net, card = model.network.eval(), model.card
        layer = args.layer or default_layer(card.architecture, net, card)
        liver = card.class_named("liver").value
        wanted = set(args.cases.split(",")) if args.cases else None
        config = Path(args.config) if args.config else ROOT / CONFIG[model_name]
        for case in load_config(config).cases:
            patient = case.meta.get("patient", case.id)
            if wanted and patient not in wanted:
                continue
            volume, reference = case.read()
            seg = segment(volume, model, "cpu")
            pre = seg.preprocessed
            region = torch.argmax(seg.logits, dim=0).numpy() == liver
            ref = reference_liver(case, volume, reference, pre)
            baseline = removal_baseline(pre.image, model.preprocessing.window)
            score = region_probability(net, liver, region, card.patch, card.overlap, "cpu")
            seconds = {}
            maps = maps_for(model, pre, liver, region, methods, layer, args.ig_steps, seconds)
            if not args.no_controls:
                maps.update({f"control:{k}": v for k, v in control_maps(pre.image, None, seed=0).items()})
            for name, m in maps.items():
                t = time.perf_counter()
                scores = evaluate_map(m, image=pre.image, baseline=baseline, score=score, target_region=region,
                                      reference=ref, spacing=array_spacing(pre.grid), steps=args.curve_steps,
                                      which=args.which.split(","))
                row = {"model": args.label or card.name, "patient": patient, "case": case.id, "method": name,
                       "layer": layer if ":" not in name and make_explainer(name).uses_layer else "",
                       "seconds": seconds.get(name), "score_seconds": round(time.perf_counter() - t, 1)}
                row.update({k: v for k, v in scores.items() if not isinstance(v, list)})
                if name in cascade or (name.startswith("control:") and cascade):
                    if ":" in name:  # the controls ignore the model: the same map at every step
                        explain_fn = (lambda clone, m=m: m)
                    else:
                        explainer = make_explainer(name, layer, args.ig_steps)
                        explain_fn = (lambda clone, e=explainer: explain_tiled(e, clone, pre.image, liver, region,
                                                                               card.patch, card.overlap, "cpu")[0])
                    r = cascading_randomisation(net, explain_fn, m, groups=args.groups,
                                                example_input=torch.zeros(1, 1, *card.patch))
                    row.update({k: v for k, v in r.items() if k != "steps"})
                    row["randomisation_steps"] = [{k: v for k, v in s.items() if k != "layers"} for s in r["steps"]]
                if out:
                    out.write(json.dumps(row, default=float) + "\n")
                    out.flush()
                shown = ("energy_inside", "mask_fraction", "relevance_rank_accuracy", "deletion_auc_normalised",
                         "insertion_auc_normalised", "road_morf_auc", "road_lerf_auc", "randomisation_spearman")
                cells = " ".join(f"{k} {row[k]:.3f}" for k in shown if isinstance(row.get(k), (int, float)))
                print(f"{model_name} {patient} {name:<15} {cells} ({row['seconds']} s + {row['score_seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
