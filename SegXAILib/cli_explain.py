"""``segxai explain``: argument parsing, file names and messages only; the work is `explain_volume`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .explainers import METHODS
from .explainers.ig import BASELINES
from .volume import refuse_overwrite, stem as file_stem, write_json_atomic, write_volume


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``explain`` sub-command to an argparse subparsers object."""
    p = subparsers.add_parser("explain", help="segment a CT volume and explain one class's segmentation",
                              description="Segment INPUT and write one explanation map per method, in INPUT's geometry.")
    p.add_argument("input", help="CT image file (NIfTI, NRRD, MHA) or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--methods", default="gradcam", help=f"comma-separated, from: {','.join(METHODS)} (default gradcam)")
    p.add_argument("--target", default=None, help="class to explain (default: the model's first foreground class)")
    p.add_argument("--region", default="predicted", help="predicted | whole | empty | point:R,A,S[:RADIUS] | mask:FILE")
    p.add_argument("--layer", default=None, help="layer for the CAM methods (default: the architecture's documented one)")
    p.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (default 32)")
    p.add_argument("--baseline", default="blur", choices=BASELINES, help="Integrated Gradients / deletion baseline (default blur: a constant air baseline breaks completeness on instance-norm models, see explainers/ig.py)")
    p.add_argument("--lrp-rule", default="epsilon", choices=("epsilon", "alphabeta"), help="LRP rule (αβ uses α=2, β=1)")
    p.add_argument("--model", default=None, help="bundled model name or model folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast for the CAMs where bf16 is fast (GPU; CPU with AMX/AVX512-BF16), fp32 otherwise; bf16: IG too (faster, completeness error ~2 %%); LRP is always fp32")
    p.add_argument("--curve-steps", type=int, default=10, help="deletion/insertion steps (at least 10)")
    p.add_argument("--no-quality", action="store_true", help="skip the quality scores and curves (faster)")
    p.add_argument("--sanity", action="store_true", help="also run the model-randomisation check")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)
    return p


def output_names(out_dir: Path, stem: str, methods, class_name: str, quality: bool) -> dict:
    """Every file the command writes, by role, so that all can be checked before any is written."""
    cls = class_name.replace(" ", "-")
    names = {m: out_dir / f"{stem}_{m}_{cls}.nrrd" for m in methods}
    names["segmentation"] = out_dir / f"{stem}.seg.nrrd"
    names["labels"] = out_dir / f"{stem}_labels.nii.gz"
    names["report"] = out_dir / f"{stem}_explain.json"
    if quality:
        names["curves"] = out_dir / f"{stem}_explain_curves.png"
    return names


class _Progress:
    """tqdm bars on stderr, one per stage."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm, self.bar, self.stage = tqdm, None, None

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = self._tqdm(total=100, desc=stage, file=sys.stderr, leave=False, unit="%")
        self.bar.n = int(round(100 * fraction))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args) -> int:
    """Run ``segxai explain``; SegXAIError propagates to the main CLI, Ctrl-C returns 130."""
    from .explaining import explain_volume, parse_methods
    from .models import load_model
    from .outputs import write_segmentation_outputs
    from .quality import plot_curves
    from .targets import parse_region
    from .volume import read_volume

    progress = _Progress()
    try:
        methods = parse_methods(args.methods)
        region = parse_region(args.region)
        out_dir = Path(args.output)
        model = load_model(args.model, "cpu")
        info = model.card.class_named(args.target) if args.target else model.card.foreground[0]
        stem = file_stem(args.input)
        quality = not args.no_quality
        names = output_names(out_dir, stem, methods, info.name, quality)
        for path in names.values():
            refuse_overwrite(path, args.overwrite)
        volume = read_volume(args.input)
        result = explain_volume(volume, model, methods, info.name, region, args.layer, args.steps, args.baseline,
                                args.lrp_rule, args.device, quality, args.curve_steps, args.sanity, args.precision,
                                progress=progress)
        progress.close()
        write_segmentation_outputs(result.segmentation.labels, model.card.classes, out_dir, stem, args.overwrite)
        for name, m in result.methods.items():
            write_volume(m.map.like(m.map.array.astype("float32", copy=False)), names[name], args.overwrite)
        report = result.to_json()
        report["input"] = str(args.input)
        report["files"] = {k: str(v) for k, v in names.items()}
        curves = {n: m.quality["curves"] for n, m in result.methods.items() if "curves" in m.quality}
        if quality and curves:
            plot_curves(curves, names["curves"], f"{info.name} — {result.target.description}", args.overwrite)
        elif "curves" in names:
            report["files"].pop("curves")
        write_json_atomic(report, names["report"], args.overwrite)
        for name, m in result.methods.items():
            extra = "".join(f", {k} {v:.3g}" for k, v in m.checks.items() if k.endswith("error"))
            print(f"{name}: {names[name]} ({m.seconds:.1f} s{extra})")
            for warning in m.warnings:
                print(f"  warning: {warning}")
        print(f"report: {names['report']}")
        return 0
    except KeyboardInterrupt:
        progress.close()
        print("interrupted; no partial files were left behind", file=sys.stderr)
        return 130
    finally:
        progress.close()
