"""What occlusion costs on a real CT, against the floor of one segmentation pass measured in the same run.

    python bench/occlusion_cost.py [--model NAME] [--device cpu|cuda] [--threads 2] [--patch 6] [--within-mm 30]
                                   [--batch N] [--plan-only] [--input Resources/Samples/ct_totalseg_A.nii.gz]

Segments the input (the sliding-window inference seconds are the floor), takes the predicted liver as the target,
and occludes ``--patch``-voxel cubes (the blur baseline as fill) within ``--within-mm`` of the liver's bounding box.
Prints one JSON object: the work planned (patches, target windows, window forwards, and what re-scoring every
window for every patch would take) and, unless ``--plan-only``, the seconds, the ratio to one segmentation pass
and the share of the map's positive mass inside the liver.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch", default="6", help="cube edges in voxels, comma-separated (one row each)")
    parser.add_argument("--within-mm", default="30", help="margins in mm, comma-separated (one row each)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--plan-only", action="store_true")
    parser.add_argument("--compare-bf16", type=int, default=0, metavar="N",
                        help="instead of the full run: N random patches scored in fp32 and under bf16 autocast")
    parser.add_argument("--input", default=str(ROOT / "Resources" / "Samples" / "ct_totalseg_A.nii.gz"))
    args = parser.parse_args()
    import torch

    from SegXAILib.explainers.ig import make_baseline
    from SegXAILib.explainers.occlusion import Occlusion
    from SegXAILib.explainers.tiling import Tiles
    from SegXAILib.models.store import default_model_name, load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.targets import make_target, parse_region
    from SegXAILib.volume import read_volume

    torch.set_num_threads(args.threads)
    name = args.model or default_model_name()
    model = load_model(name, args.device)
    card = model.card
    volume = read_volume(args.input)
    seg = segment(volume, model, args.device)
    pre = seg.preprocessed
    predicted = torch.argmax(seg.logits, dim=0).numpy()
    target = make_target(card, "liver", parse_region("predicted"), pre, predicted)
    base = make_baseline(pre.image, "blur", model.preprocessing.window)
    model.network.eval()
    tiles = Tiles(model.network, pre.image, target.class_value, target.region, card.patch, card.overlap,
                  torch.device(seg.device), base, args.precision)
    for patch in (int(p) for p in args.patch.split(",")):
        for within in (float(w) for w in args.within_mm.split(",")):
            explainer = Occlusion(patch_voxels=patch, within_mm=within, spacing=card.spacing, batch=args.batch)
            one_setting(explainer, tiles, seg, target, name, args, patch, within)


def one_setting(explainer, tiles, seg, target, name, args, patch, within) -> None:
    """Plan (and unless --plan-only, run) one occlusion setting; print its JSON row."""
    import torch

    from SegXAILib.explainers.tiling import explain_padded
    from SegXAILib.localisation import energy_inside

    pre, card = seg.preprocessed, seg.card
    features, windows, jobs = explainer.plan(tiles)
    row = {"model": name, "input": Path(args.input).name, "device": seg.device, "threads": args.threads,
           "model_grid": list(pre.image.shape), "window": list(card.patch), "windows": len(tiles),
           "liver_voxels": int(target.region.sum()), "patch_voxels": patch, "within_mm": within,
           "patches": len(features), "target_windows": len(windows), "window_forwards": len(windows) + len(jobs),
           "full_rescoring_window_forwards": (len(features) + 1) * len(tiles),
           "segmentation_passes_of_work": round((len(windows) + len(jobs)) / len(tiles), 1),
           "segment_inference_s": round(seg.seconds["inference"], 2), "precision": args.precision}
    if args.compare_bf16:
        row.update(compare_bf16(explainer, tiles, args.compare_bf16))
    elif not args.plan_only:
        t = time.perf_counter()
        out, totals = explain_padded(explainer, tiles)
        seconds = time.perf_counter() - t
        occlusion = tiles.crop(out)
        row.update({"occlusion_s": round(seconds, 2), "x_segmentation_pass": round(seconds / seg.seconds["inference"], 1),
                    "forward_passes": totals["forward_passes"], "score": round(totals["score"], 3),
                    "energy_inside_liver": round(energy_inside(occlusion, target.region), 4),
                    "liver_fraction_of_grid": round(float(target.region.mean()), 4),
                    "positive_fraction": round(float((occlusion > 0).mean()), 4)})
        if seg.device.startswith("cuda"):
            row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(row), flush=True)


def compare_bf16(explainer, tiles, count: int) -> dict:
    """F(x) − F(x_P) of ``count`` random patches in fp32 and under bf16 autocast: seconds and the deltas' error."""
    import copy

    import numpy as np

    from SegXAILib.explainers.occlusion import Occlusion
    from SegXAILib.explainers.tiling import explain_padded

    features = explainer.features(tiles)
    chosen = [features[i] for i in np.random.default_rng(0).choice(len(features), size=count, replace=False)]

    class Some(Occlusion):
        def features(self, tiles):
            return chosen

    some = copy.copy(explainer)
    some.__class__ = Some
    out = {}
    deltas = {}
    for precision in ("fp32", "bf16"):
        problem = copy.copy(tiles)
        problem.precision = precision
        t = time.perf_counter()
        result, totals = explain_padded(some, problem)
        out[f"{precision}_s"] = round(time.perf_counter() - t, 2)
        out[f"{precision}_window_forwards"] = totals["window_evaluations"]
        deltas[precision] = np.array([result[tuple(s.start for s in box)] for box, _ in chosen], dtype=np.float64)
        out[f"{precision}_score"] = round(totals["score"], 3)
    scale = float(np.abs(deltas["fp32"]).max())
    out.update({"compared_patches": count, "fp32_deltas": deltas["fp32"].round(4).tolist(),
                "bf16_deltas": deltas["bf16"].round(4).tolist(),
                "bf16_max_error_of_max_delta": round(float(np.abs(deltas["bf16"] - deltas["fp32"]).max()) / scale, 4)})
    return out


if __name__ == "__main__":
    main()
