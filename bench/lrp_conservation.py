"""LRP conservation on the bundled models and sample, per window and over the tiled volume, and where relevance goes.

    OMP_NUM_THREADS=1 python bench/lrp_conservation.py                      # both models, every rule (~25 min, 1 thread)
    OMP_NUM_THREADS=1 python bench/lrp_conservation.py --models segxai-resunet-3mm --rules composite --previous 175c568

The sample (Resources/Samples/ct_totalseg_A.nii.gz) is segmented with the model; the target is the liver class
summed over the predicted liver, blended over the sliding windows exactly as ``explainers/tiling.py`` does
(weights = region · g_w/G per window). Each window with target voxels is explained with each rule; the volume's
figures are the windows' sums (what tiling adds up). Conservation error = |ΣR_input − F| / |F|. The gap F − ΣR is
split with ``relevance_ledger`` into what the convolutions' and linear layers' biases (and ε/stabilisers) absorb,
what the norms' shifts (β, running means) absorb, and the rest (the TransUNet's position embeddings at their
addition; ~0 for the U-Net), and the three layers absorbing most are listed. Shares are of the volume's F; a
negative share is relevance created.
``--previous REV`` adds the LRP of that git revision (e.g. 175c568: ε rule, LayerNorm/InstanceNorm mean frozen).
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

#: rule label → LRP keyword arguments
RULE_SETS = {
    "composite": {"rule": "composite"},  # ε dense, γ=0.25 conv, z^B [0, 1] input: the default
    "composite/flat": {"rule": "composite", "input_rule": "flat"},
    "composite-zplus": {"rule": "composite-zplus"},
    "epsilon": {"rule": "epsilon"},
    "alphabeta": {"rule": "alphabeta"},
}


def previous_lrp(rev: str):
    """The LRP class of an earlier git revision, imported beside the current package (for the before/after)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:SegXAILib/explainers/lrp.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "lrp_previous.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("SegXAILib.explainers._lrp_previous", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LRP


def windows(shape, patch, overlap):
    from SegXAILib.inference import window_starts

    return list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch))))


def kind(module: nn.Module) -> str:
    from SegXAILib.explainers.lrp import _NORMS

    return "norm shifts" if isinstance(module, _NORMS) else "biases"


def run_model(name: str, rules: list, sample: Path, previous) -> list:
    from SegXAILib.explainers.lrp import LRP, relevance_ledger
    from SegXAILib.inference import importance, monai_padding as _pad_amounts
    from SegXAILib.models.store import load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.targets import make_target, parse_region
    from SegXAILib.volume import read_volume

    model = load_model(name)
    net, card = model.network.eval(), model.card
    seg = segment(read_volume(sample), model, "cpu")
    pre = seg.preprocessed
    target = make_target(card, "liver", parse_region("predicted"), pre, torch.argmax(seg.logits, dim=0).numpy())
    patch = tuple(int(p) for p in card.patch)
    pads = _pad_amounts(pre.image.shape, patch)
    image, region = np.pad(pre.image.astype(np.float32), pads), np.pad(target.region.astype(bool), pads)
    starts = windows(image.shape, patch, card.overlap)
    g = importance(patch)
    norm = np.zeros(image.shape, dtype=np.float32)
    for st in starts:
        norm[tuple(slice(a, a + p) for a, p in zip(st, patch))] += g
    modules = dict(net.named_modules())
    explainers = {label: LRP(**kwargs) for label, kwargs in RULE_SETS.items() if label in rules}
    if previous is not None:
        explainers[f"previous ({previous[0]})"] = previous[1]()
    rows = []
    for label, explainer in explainers.items():
        per_window, score, rsum, absorbed, seconds = [], 0.0, 0.0, {"biases": 0.0, "norm shifts": 0.0}, []
        by_layer: dict = {}
        for st in starts:
            win = tuple(slice(a, a + p) for a, p in zip(st, patch))
            if not region[win].any():
                continue
            w = torch.from_numpy(np.where(region[win], g / norm[win], 0.0).astype(np.float32))[None]
            x = torch.from_numpy(np.ascontiguousarray(image[win]))[None, None]
            t0 = time.perf_counter()
            result = explainer.attribute(net, x, target.class_value, w)
            seconds.append(time.perf_counter() - t0)
            f, r = result.totals["score"], result.totals["relevance_sum"]
            per_window.append(abs(r - f) / abs(f))
            score, rsum = score + f, rsum + r
            if isinstance(explainer, LRP):
                for layer, value in relevance_ledger(explainer).items():
                    absorbed[kind(modules[layer])] += value
                    by_layer[layer] = by_layer.get(layer, 0.0) + value
        row = {"model": name, "rule": label, "windows": len(per_window), "score": score, "relevance_sum": rsum,
               "window_error_median": float(np.median(per_window)), "window_error_min": float(min(per_window)),
               "window_error_max": float(max(per_window)), "volume_error": abs(rsum - score) / abs(score),
               "s_per_window": float(np.mean(seconds)), "params": getattr(explainer, "params", dict)()}
        if isinstance(explainer, LRP):
            row.update({k: v / score for k, v in absorbed.items()})
            row["other"] = (score - rsum - sum(absorbed.values())) / score
            top = sorted(by_layer.items(), key=lambda kv: -abs(kv[1]))[:3]
            row["top_layers"] = [(layer, type(modules[layer]).__name__, value / score) for layer, value in top]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list) -> str:
    def pct(v):
        return "—" if v is None else f"{100 * v:+.1f} %"

    lines = ["| model | rule | windows | error per window: median [min, max] | error, tiled volume | ΣR/F | "
             "biases (+ε) | norm shifts | other (pos. emb.) | s/window |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['rule']} | {r['windows']} | {r['window_error_median']:.3g} "
            f"[{r['window_error_min']:.3g}, {r['window_error_max']:.3g}] | {r['volume_error']:.3g} | "
            f"{r['relevance_sum'] / r['score']:.3f} | {pct(r.get('biases'))} | {pct(r.get('norm shifts'))} | "
            f"{pct(r.get('other'))} | {r['s_per_window']:.1f} |")
    lines += ["", "| model | rule | layers absorbing most (share of F; negative: created) |", "|---|---|---|"]
    for r in rows:
        if "top_layers" in r:
            top = "; ".join(f"`{name}` ({kind}) {100 * v:+.1f} %" for name, kind, v in r["top_layers"])
            lines.append(f"| {r['model']} | {r['rule']} | {top} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="segxai-resunet-3mm,segxai-transunet-3mm")
    parser.add_argument("--rules", default=",".join(RULE_SETS), help=f"some of {', '.join(RULE_SETS)}")
    parser.add_argument("--previous", default="", help="also run the LRP of this git revision (e.g. 175c568)")
    parser.add_argument("--sample", default=str(ROOT / "Resources" / "Samples" / "ct_totalseg_A.nii.gz"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rules = [r for r in args.rules.split(",") if r]
    unknown = set(rules) - set(RULE_SETS)
    if unknown:
        parser.error(f"unknown rules {sorted(unknown)}; use some of {', '.join(RULE_SETS)}")
    previous = (args.previous, previous_lrp(args.previous)) if args.previous else None
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += run_model(name, rules, Path(args.sample), previous)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"torch {torch.__version__}, {args.threads} thread(s), sample {Path(args.sample).name}")
    print(table(rows))


if __name__ == "__main__":
    main()
