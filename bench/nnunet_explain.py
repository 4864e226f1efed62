"""Explaining an nnU-Net v2 model: SegXAI's Grad-CAM, HiResCAM and IG against nnU-Net's own prediction (the floor)
and against nnunetv2-cam (PyPI) on the same model and CT: seconds, peak memory, and whether the map is on the
input grid. Each step runs in its own process, so its peak RSS is its own.

    python bench/nnunet_explain.py [--model NNUNET_FOLDER] [--ct CT] [--out bench/results/nnunet_explain.jsonl]

Without --model, a PlainConvUNet folder with random weights is built (``Testing/nnunet_folder.py``; 4 stages,
8–64 features, patch 48³, 6 mm, one fold, no mirroring as TotalSegmentator's trainer): cost depends on the
architecture and windows, not on what the weights learned. IG's completeness and LRP's conservation error are
reported for the maps made. nnunetv2-cam: ``pip install --no-deps nnunetv2-cam`` (its other needs come with [test]).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

STEPS = ("nnunet_predict", "segxai_segment", "segxai_gradcam", "segxai_hirescam", "segxai_ig", "segxai_lrp",
         "nnunetv2_cam_gradcam")


def build_model(root: Path) -> Path:
    import nnunet_folder

    plans = nnunet_folder.plans(spacing=(6.0, 6.0, 6.0), patch=(48, 48, 48), transpose=(0, 1, 2))
    plans["configurations"]["3d_fullres"]["architecture"] = nnunet_folder.architecture(features=(8, 16, 32, 64))
    return nnunet_folder.build(root, folds=(0,), plans_dict=plans, mirror_axes=None)


def run_step(step: str, model: str, ct: str, layer: str, ig_steps: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    out = {"step": step}
    if step in ("nnunet_predict", "nnunetv2_cam_gradcam"):
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(model, use_folds=None)
        image, props = SimpleITKIO().read_images([ct])
        t = time.perf_counter()
        if step == "nnunet_predict":
            labels = predictor.predict_single_npy_array(image, props, None, None, False)
            out["output_shape"], out["input_shape"] = list(labels.shape), list(image.shape[1:])
        else:
            try:
                from helpers import torchvision_standin

                torchvision_standin()  # pytorch-grad-cam imports torchvision, whose builds need a CUDA torch
                from nnunetv2_cam.api import run_cam_for_prediction
            except ImportError:
                return {"step": step, "skipped": "nnunetv2-cam is not installed (pip install --no-deps nnunetv2-cam)"}
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                maps = run_cam_for_prediction(predictor, ct, folder, target_layer=layer, target_class=1,
                                              method="gradcam", cam_type="3d", device=torch.device("cpu"),
                                              save_slices=False)
            cam = np.asarray(maps[0])
            out["output_shape"], out["input_shape"] = list(cam.shape), list(image.shape[1:])
        out["seconds"] = time.perf_counter() - t
    else:
        from SegXAILib.explaining import explain_volume
        from SegXAILib.models.store import load_model
        from SegXAILib.pipeline import segment
        from SegXAILib.volume import read_volume

        loaded, volume = load_model(model), read_volume(ct)
        t = time.perf_counter()
        if step == "segxai_segment":
            result = segment(volume, loaded, "cpu")
            out["output_shape"] = list(result.labels.shape)
        else:
            method = step.split("_", 1)[1]
            result = explain_volume(volume, loaded, [method], target="liver", layer=layer, steps=ig_steps, device="cpu",
                                    precision="fp32")
            m = result.methods[method]
            out["output_shape"], out["method_seconds"] = list(m.map.shape), m.seconds
            out["checks"] = {k: v for k, v in m.checks.items() if k != "totals"}
            out["on_input_grid"] = bool(m.map.shape == volume.shape and np.allclose(m.map.ijk_to_ras, volume.ijk_to_ras))
        out["seconds"] = time.perf_counter() - t
        out["input_shape"] = list(volume.shape)
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="")
    ap.add_argument("--ct", default=str(ROOT.parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz"))
    ap.add_argument("--layer", default="decoder.stages.1")
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--out", default="")
    ap.add_argument("--step", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.model, args.ct, args.layer, args.ig_steps)))
        return 0
    model = args.model
    if not model:
        import tempfile

        model = str(build_model(Path(tempfile.mkdtemp(prefix="nnunet-bench-"))))
    rows = []
    for step in args.steps.split(","):
        cmd = [sys.executable, __file__, "--step", step, "--model", model, "--ct", args.ct, "--layer", args.layer,
               "--ig-steps", str(args.ig_steps)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"step": step, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    floor = next((r["seconds"] for r in rows if r["step"] == "nnunet_predict" and "seconds" in r), None)
    print(f"\n| step | seconds | × nnU-Net's prediction | peak RSS MiB | map shape | input shape |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "seconds" not in r:
            print(f"| {r['step']} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        ratio = f"{r['seconds'] / floor:.2f}" if floor else "—"
        print(f"| {r['step']} | {r['seconds']:.1f} | {ratio} | {r['max_rss_mib']} | {r.get('output_shape')} | "
              f"{r.get('input_shape')} |")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "model": model, "ct": args.ct, "layer": args.layer}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
