"""Our Integrated Gradients against captum's on the same blended sliding-window function, alternated in one
process so that both see the same machine state (this VM's speed drifts over minutes).

    python bench/ig_head_to_head.py [--model segxai-transunet-3mm] [--steps 8] [--repeats 2] [--threads 2]

Prints one line per repeat: both times (fp32, the bundled sample, liver over the predicted liver) and their ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segxai-resunet-3mm")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import numpy as np
    import torch
    from captum.attr import IntegratedGradients as CaptumIG

    from run import blended_score
    from SegXAILib.explainers.ig import IntegratedGradients, make_baseline
    from SegXAILib.explainers.tiling import explain_tiled
    from SegXAILib.models.store import load_model, resources_dir
    from SegXAILib.pipeline import segment
    from SegXAILib.volume import read_volume

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    net, card = model.network.eval(), model.card
    seg = segment(read_volume(resources_dir() / "Samples" / "ct_totalseg_A.nii.gz"), model, "cpu")
    pre = seg.preprocessed
    liver = card.class_named("liver").value
    region = seg.logits.argmax(0).numpy() == liver
    base = make_baseline(pre.image, "blur", model.preprocessing.window)
    x = torch.from_numpy(pre.image.astype(np.float32))[None, None]
    b = torch.from_numpy(base.astype(np.float32))[None, None]
    captum_ig = CaptumIG(blended_score(net, card, liver, torch.from_numpy(region)[None], torch.device("cpu")))
    # one untimed step of each first: the first gradient call in a process pays for kernel set-up
    explain_tiled(IntegratedGradients(1), net, pre.image, liver, region, card.patch, card.overlap, "cpu", base)
    captum_ig.attribute(x, baselines=b, n_steps=1, internal_batch_size=1)
    for _ in range(args.repeats):
        t = time.perf_counter()
        explain_tiled(IntegratedGradients(args.steps), net, pre.image, liver, region, card.patch, card.overlap, "cpu", base)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        captum_ig.attribute(x, baselines=b, n_steps=args.steps, internal_batch_size=1)
        theirs = time.perf_counter() - t
        print(f"{args.model} IG-{args.steps} fp32: ours {ours:.1f} s, captum {theirs:.1f} s, captum/ours {theirs / ours:.2f}", flush=True)


if __name__ == "__main__":
    main()
