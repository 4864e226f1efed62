"""Segmentation time and peak memory per bundled model on the team's real CTs (CPU or GPU).

    python bench/segment.py [--device cpu] [--threads 2] [--data ../shared/data]

Prints one JSON object per (model, case): seconds for pre-processing, sliding-window inference and
post-processing (resampling back to the input grid included), and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    import torch

    from SegXAILib.models.store import bundled_models, load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.volume import read_volume

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    inputs = {
        "A totalseg_example 122x101x112": data / "totalseg_example" / "ct.nii.gz",
        "B totalseg_dicom 512x512x20": data / "totalseg_dicom" / "dicom",
        "C ircad_1.17 512x512x119": data / "ircad_1.17" / "ct.nii.gz",
    }
    for name in bundled_models():
        model = load_model(name)
        for case, path in inputs.items():
            if not path.exists():
                continue
            volume = read_volume(path)
            t = time.perf_counter()
            result = segment(volume, model, args.device)
            total = time.perf_counter() - t
            print(json.dumps({
                "model": name, "case": case, "device": result.device, "threads": args.threads,
                "seg_s": round(total, 2), **{f"{k}_s": round(v, 2) for k, v in result.seconds.items() if k != "total"},
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }), flush=True)


if __name__ == "__main__":
    main()
