"""Cost of each quality score on the bundled sample with a bundled model, against one segmentation pass measured
in the same run, and (``--baselines``) the liver probability left when the whole liver is replaced by each
candidate removal baseline (what chose ``quality.REMOVAL_HU``).

    OMP_NUM_THREADS=1 python bench/score_cost.py [--model segxai-transunet-3mm] [--steps 10] [--threads 1]
                                                 [--baselines] [--skip road,body_deletion_insertion]

Prints one JSON object per line: the segmentation pass, one re-scoring, each score group's seconds (and its
seconds per re-scoring), one cascading-randomisation step's comparison, and the baselines table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="segxai-transunet-3mm")
    parser.add_argument("--sample", default=str(ROOT / "Resources" / "Samples" / "ct_totalseg_A.nii.gz"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baselines", action="store_true", help="also measure the candidate removal baselines")
    parser.add_argument("--skip", default="", help="comma-separated score groups not to time")
    parser.add_argument("--patch", type=int, default=1, help="removal granularity: cubes of this many voxels a side")
    parser.add_argument("--no-cascade", action="store_true", help="--real-check without the randomisation cascade")
    parser.add_argument("--real-check", action="store_true",
                        help="instead of timing: deletion/insertion and cascading randomisation (4 groups) of the "
                             "liver score's gradient map against the random and edge controls")
    args = parser.parse_args()

    import numpy as np
    import torch
    from scipy.ndimage import gaussian_filter

    from SegXAILib.models.store import load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.quality import (GROUPS, body_region, compare_maps, control_maps, evaluate_map, noisy_linear_imputation,
                                   region_probability, removal_baseline)
    from SegXAILib.localisation import array_spacing
    from SegXAILib.volume import read_volume

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    volume = read_volume(args.sample)
    t = time.perf_counter()
    seg = segment(volume, model, args.device)
    seg_s = time.perf_counter() - t
    image = seg.preprocessed.image
    window = model.preprocessing.window
    liver = next(c.value for c in model.card.classes if c.name == "liver")
    region = torch.argmax(seg.logits, dim=0).numpy() == liver
    emit(what="segmentation pass", model=args.model, seconds=round(seg_s, 2), grid=list(image.shape),
         liver_voxels=int(region.sum()), liver_share=round(float(region.mean()), 4), threads=args.threads)

    score = region_probability(model.network, liver, region, model.card.patch, model.card.overlap, args.device)
    t = time.perf_counter()
    original = score(image)
    rescore_s = time.perf_counter() - t
    emit(what="one re-scoring", seconds=round(rescore_s, 2), windows=len(score.windows),
         of_windows=score.total_windows, liver_probability=round(original, 4),
         full_pass_probability=round(float(torch.softmax(seg.logits, 0)[liver].numpy()[region].mean()), 4))

    if args.baselines:
        rng = np.random.default_rng(0)
        body = body_region(image, window)
        hu = window.value_of
        candidates = {
            "blur sigma 4 (the old default)": lambda: gaussian_filter(image, 4, mode="nearest"),
            "blur sigma 16": lambda: gaussian_filter(image, 16, mode="nearest"),
            "blur sigma 16 + noise (body std)": lambda: gaussian_filter(image, 16, mode="nearest")
            + rng.normal(0, image[body].std(), image.shape).astype(np.float32),
            "air -1000 HU (the window floor)": lambda: np.full_like(image, hu(-1000)),
            "fat -100 HU (chosen)": lambda: removal_baseline(image, window),
            "water 0 HU": lambda: np.full_like(image, hu(0)),
            "body mean": lambda: np.full_like(image, image[body].mean()),
            "ROAD noisy linear imputation": lambda: noisy_linear_imputation(image, region, 0.01, 0),
        }
        for name, make in candidates.items():
            base = make()
            emit(what="liver probability at 100 % deletion", baseline=name,
                 probability=round(score(np.where(region, base, image).astype(np.float32)), 4),
                 original=round(original, 4))

    if args.real_check:
        real_check(model, score, image, region, window, args.steps, args.patch, not args.no_cascade)
        return
    saliency = control_maps(image, region)["edge"]
    baseline = removal_baseline(image, window)
    body = body_region(image, window)
    spacing = array_spacing(seg.preprocessed.grid)
    calls = [0]

    def counted(x):
        calls[0] += 1
        return score(x)

    skip = {s for s in args.skip.split(",") if s}
    for group in GROUPS:
        if group in skip:
            continue
        calls[0] = 0
        t = time.perf_counter()
        out = evaluate_map(saliency, image=image, baseline=baseline, score=counted, target_region=region,
                           body_region=body, spacing=spacing, steps=args.steps, which=(group,))
        seconds = time.perf_counter() - t
        emit(what="score group", group=group, seconds=round(seconds, 2), rescorings=calls[0],
             per_segmentation_pass=round(seconds / seg_s, 2), steps=args.steps,
             figures={k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()
                      if not isinstance(v, list)})

    other = control_maps(image, region, seed=1)["random"]
    t = time.perf_counter()
    compare_maps(saliency, other)
    emit(what="randomisation comparison (one cascade step, without its explanation)",
         seconds=round(time.perf_counter() - t, 2),
         note="each cascade step also costs one explanation of the method on the randomised model")


def real_check(model, score, image, region, window, steps, patch=1, cascade=True) -> None:
    """Do the scores put a map of the model (gradient × input of the liver score) above the two controls?"""
    import numpy as np
    import torch

    from SegXAILib.quality import cascading_randomisation, control_maps, evaluate_map, removal_baseline
    from SegXAILib.rescoring import CroppedRegionScore

    baseline = removal_baseline(image, window)
    gradient = score.gradient(image)
    maps = {"gradient x (input - baseline)": gradient * (image - baseline), **control_maps(image, region)}
    for name, saliency in maps.items():
        t = time.perf_counter()
        out = evaluate_map(saliency, image=image, baseline=baseline, score=score, target_region=region, steps=steps,
                           which=("localisation", "complexity", "deletion_insertion"), patch=patch)
        emit(what="real check", map=name, patch=patch, seconds=round(time.perf_counter() - t, 1),
             figures={k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()
                      if not isinstance(v, list)})
    if not cascade:
        return
    liver = score.class_index

    def gradient_map(net):
        s = CroppedRegionScore(net, liver, region, model.card.patch, model.card.overlap, score.device)
        return s.gradient(image) * (image - baseline)

    example = torch.from_numpy(image[(None, None) + tuple(slice(0, p) for p in model.card.patch)].copy())
    for name, fn, original in (("gradient x (input - baseline)", gradient_map, maps["gradient x (input - baseline)"]),
                               ("edge", lambda net: maps["edge"], maps["edge"])):
        t = time.perf_counter()
        r = cascading_randomisation(model.network, fn, original, groups=4, example_input=example)
        emit(what="cascading randomisation", map=name, seconds=round(time.perf_counter() - t, 1),
             steps=[{k: (round(v, 3) if isinstance(v, float) else v) for k, v in st.items() if k != "layers"}
                    | {"layers": f"{st['layers'][0]} .. {st['layers'][-1]} ({len(st['layers'])})"}
                    for st in r["steps"]])


if __name__ == "__main__":
    main()
