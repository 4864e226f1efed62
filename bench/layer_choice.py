"""Which layer should a bundled model's CAMs explain? Measured on every labelled patient, for every candidate layer.

For each model, case and candidate layer: Grad-CAM and HiResCAM of the predicted liver (the default target),
all layers from one forward/backward pass per window (``gradcam.layer_passes``), scored against the
*reference* liver on the model grid:
- ``energy``: share of the map's positive mass inside the reference liver; ``chance``: the liver's share of
  the body (voxels above −500 HU) — a map that knows nothing about the liver scores about that;
- ``positive``: fraction of the volume where the map is > 0 (an almost empty map is useless);
- ``neg_w``: negative channel weights / channels (Grad-CAM).
Prints one table row per model × layer × method (mean and minimum energy over the cases) and writes JSON lines.
The bundled models were trained on all four patients, so these are training patients: say so with the figures.

    python bench/layer_choice.py --out bench/results/layer_choice.jsonl [--models segxai-resunet-3mm] [--cases A,C]
    python bench/layer_choice.py --table bench/results/layer_choice.jsonl     # the Markdown table of BENCHMARKS.md
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

from SegXAILib.explainers.gradcam import GradCAM, HiResCAM, layer_passes  # noqa: E402
from SegXAILib.explainers.tiling import Tiles  # noqa: E402
from SegXAILib.layers import explainable_layers  # noqa: E402
from SegXAILib.models.store import load_model  # noqa: E402
from SegXAILib.pipeline import segment  # noqa: E402
from SegXAILib.preprocessing import labels_on_grid  # noqa: E402
from SegXAILib.training import load_config  # noqa: E402

CONFIG = {"segxai-resunet-3mm": "configs/resunet-3mm.json", "segxai-transunet-3mm": "configs/transunet-3mm.json"}


def candidates(model) -> list:
    """Block-level layers below full resolution plus the first full-resolution one; never the output itself."""
    layers = [l for l in explainable_layers(model.network, model.card.patch) if not l.is_output and not l.same_as]
    blocks = [l for l in layers if ".conv.unit" not in l.name]  # a residual unit's inner convolutions: its own block covers them
    return [l.name for l in blocks if l.scale < 1] + [l.name for l in blocks if l.scale >= 1][:1]


def reference_liver(case, volume, reference, pre) -> np.ndarray:
    """The reference liver (with its tumours) on the model grid."""
    values = [v for v, names in case.groups.items() if "liver" in names or "liver tumor" in names]
    mask = np.isin(reference.array, values).astype(np.uint8)
    return labels_on_grid(reference.like(mask), pre.grid) != 0


def markdown(path: str) -> str:
    """One Markdown table per model: energy in the reference liver per patient (× chance), per layer and method."""
    rows = [json.loads(line) for line in open(path)]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        patients = list(dict.fromkeys(r["patient"] for r in mine))
        chance = {r["patient"]: r["chance"] for r in mine}
        out.append(f"**{model}** (chance: the reference liver's share of the body, "
                   + ", ".join(f"{p} {chance[p]:.2f}" for p in patients) + ")\n")
        out.append("| layer | method | " + " | ".join(patients) + " | worst × chance | min. positive |")
        out.append("|---|---|" + "---|" * (len(patients) + 2))
        for layer in dict.fromkeys(r["layer"] for r in mine):
            for method in ("hirescam", "gradcam"):
                rs = {r["patient"]: r for r in mine if r["layer"] == layer and r["method"] == method}
                if not rs:
                    continue
                cells = [f"{rs[p]['energy']:.2f}" if rs[p]["energy"] == rs[p]["energy"] else "empty" for p in patients]
                worst = min((rs[p]["energy"] if rs[p]["energy"] == rs[p]["energy"] else 0.0) / chance[p] for p in patients)
                out.append(f"| `{layer}` | {method} | " + " | ".join(cells) + f" | {worst:.1f} | "
                           f"{min(r['positive'] for r in rs.values()):.3f} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="segxai-resunet-3mm,segxai-transunet-3mm")
    ap.add_argument("--cases", default="", help="patients to use (A,B,C,D); default every labelled case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--table", default="", help="print the Markdown table of a results file and stop")
    args = ap.parse_args()
    if args.table:
        print(markdown(args.table))
        return 0
    torch.set_num_threads(args.threads)
    out = open(args.out, "a") if args.out else None
    for model_name in args.models.split(","):
        model = load_model(model_name, "cpu")
        net = model.network.eval()
        cfg = load_config(ROOT / CONFIG[model_name])
        wanted = set(args.cases.split(",")) if args.cases else None
        layers = candidates(model)
        liver = model.card.class_named("liver").value
        rows = {}
        for case in cfg.cases:
            patient = case.meta.get("patient", case.id)
            if wanted and patient not in wanted:
                continue
            volume, reference = case.read()
            t0 = time.perf_counter()
            seg = segment(volume, model, "cpu")
            pre = seg.preprocessed
            predicted = torch.argmax(seg.logits, dim=0).numpy() == liver
            ref = reference_liver(case, volume, reference, pre)
            body = pre.image > model.preprocessing.window.value_of(-500.0)
            chance = float(ref[body].mean())
            tiles = Tiles(net, pre.image, liver, predicted, model.card.patch, model.card.overlap, "cpu")
            passes, score = layer_passes(tiles, layers)
            seconds = time.perf_counter() - t0
            for layer in layers:
                acts, grads = passes[layer]
                for cam in (GradCAM(layer), HiResCAM(layer)):
                    padded, totals = cam.assemble(tiles, acts, grads, score)
                    m = tiles.crop(padded)
                    total = float(m.sum(dtype=np.float64))
                    energy = float(m[ref].sum(dtype=np.float64)) / total if total > 0 else float("nan")
                    row = {"model": model_name, "patient": patient, "case": case.id, "layer": layer, "method": cam.name,
                           "energy": energy, "chance": chance, "positive": totals["positive_fraction"],
                           "neg_w": (f"{totals['negative_weights']}/{totals['channels']}" if "channels" in totals else ""),
                           "pass_seconds": round(seconds, 1)}
                    rows.setdefault((layer, cam.name), []).append(row)
                    if out:
                        out.write(json.dumps(row) + "\n")
                        out.flush()
            print(f"{model_name} {patient}: {len(layers)} layers in {seconds:.0f} s (chance {chance:.3f})", flush=True)
            del passes
        print(f"\n{model_name}: layer, method, energy in reference liver per patient (chance), positive fraction")
        for (layer, method), rs in rows.items():
            cells = " ".join(f"{r['patient']} {r['energy']:.3f} ({r['chance']:.3f})" for r in rs)
            pos = min(r["positive"] for r in rs)
            print(f"  {layer:<48} {method:<9} {cells}  min positive {pos:.3f} {rs[0]['neg_w']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
