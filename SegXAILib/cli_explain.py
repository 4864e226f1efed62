"""``segxai explain``: argument parsing, file names and messages only; the work is `explain_volume`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .explainers import METHODS
from .explainers.ig import BASELINES
from .explainers.lrp import RULES as LRP_RULES
from .quality import DEFAULT_GROUPS, GROUPS
from .volume import refuse_overwrite, stem as file_stem, write_json_atomic, write_volume


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``explain`` sub-command to an argparse subparsers object."""
    p = subparsers.add_parser("explain", help="segment a CT volume and explain one class's segmentation",
                              description="Segment INPUT and write one explanation map per method, in INPUT's geometry.")
    p.add_argument("input", help="CT image file (NIfTI, NRRD, MHA) or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--methods", default=None, help=f"comma-separated, from: {','.join(METHODS)} (default: the method "
                   "the model card measured as best, else gradcam)")
    p.add_argument("--target", default=None, help="class to explain (default: the model's first foreground class)")
    p.add_argument("--region", default="predicted", help="predicted | whole | empty | point:R,A,S[:RADIUS] | mask:FILE")
    p.add_argument("--layer", default=None, help="layer for the CAM methods (default: the architecture's documented one)")
    p.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (default 32)")
    p.add_argument("--baseline", default="blur", choices=BASELINES, help="Integrated Gradients / deletion baseline (default blur: a constant air baseline breaks completeness on instance-norm models, see explainers/ig.py)")
    p.add_argument("--lrp-rule", default="composite", choices=LRP_RULES,
                   help="LRP rules (composite: ε for dense layers, γ for convolutions, z^B at the input; αβ uses α=2, β=1)")
    p.add_argument("--lrp-epsilon", type=float, default=1e-6, help="LRP ε (stabiliser of the ε rule)")
    p.add_argument("--lrp-gamma", type=float, default=0.25, help="LRP γ (weight of positive contributions in the γ rule)")
    p.add_argument("--occlusion-mm", type=float, default=48.0, help="occlusion cube edge in mm, cubes over the target's "
                   "bounding box (default 48: about 160 segmentation passes' work on the bundled sample; 18 mm is a GPU job)")
    p.add_argument("--smooth", default="ig", help="the method SmoothGrad averages over noisy copies (default ig)")
    p.add_argument("--samples", type=int, default=8, help="SmoothGrad noisy copies (default 8)")
    p.add_argument("--sigma", type=float, default=0.15, help="SmoothGrad noise σ as a fraction of the image's range")
    p.add_argument("--reference", default=None, help="reference label of the target class (a label volume): localisation "
                   "scores are measured against it instead of the prediction")
    p.add_argument("--scores", default=",".join(DEFAULT_GROUPS), help=f"score groups, from: {','.join(GROUPS)} "
                   f"(default {','.join(DEFAULT_GROUPS)}; road and faithfulness_correlation cost many re-scorings)")
    p.add_argument("--seed", type=int, default=0, help="seed of tie-breaking, ROAD noise and the random control map")
    p.add_argument("--model", default=None, help="bundled model name or model folder")
    p.add_argument("--trust-model", action="store_true", help="let a MONAI bundle's config name any Python "
                   "(_target_ outside MONAI/torch, $ expressions): only for a bundle you trust")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast for the CAMs where bf16 is fast (GPU; CPU with AMX/AVX512-BF16), fp32 otherwise; bf16: IG too (faster, completeness error ~2 %%); LRP is always fp32")
    p.add_argument("--curve-steps", type=int, default=10, help="deletion/insertion/ROAD steps (at least 10)")
    p.add_argument("--no-quality", action="store_true", help="skip the quality scores and curves (faster)")
    p.add_argument("--sanity", action="store_true", help="also run the cascading model-randomisation check (Adebayo et "
                   "al.; three more explanations per method)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--progress", default="bar", choices=("bar", "lines"), help="bar: progress bars on stderr; lines: "
                   "one JSON object per update on stderr ({\"stage\": ..., \"fraction\": ...}), for a program that "
                   "shows the progress itself (segxai review)")
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


class _ProgressLines:
    """One JSON line per progress update on stderr (``--progress lines``); repeated updates of a stage at the same
    whole per cent are not written again."""

    def __init__(self) -> None:
        self.last = None

    def __call__(self, stage: str, fraction: float) -> None:
        import json

        key = (stage, int(100 * fraction))
        if key != self.last:
            self.last = key
            print(json.dumps({"stage": stage, "fraction": round(float(fraction), 4)}), file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


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


def curve_of(scores: dict) -> dict:
    """A method's deletion/insertion curves from its flat scores, as ``quality.plot_curves`` draws them."""
    return {"fractions": scores["curve_fractions"], "deletion": scores["deletion_curve"],
            "insertion": scores["insertion_curve"], "deletion_auc": scores["deletion_auc"],
            "insertion_auc": scores["insertion_auc"]}


def write_explanation(result, classes, out_dir, stem: str, class_name: str, input_path, reference_path=None,
                      quality: bool = True, listed_dir=None, overwrite: bool = False) -> dict:
    """Write one run's files as ``segxai explain`` lays them out (labels and .seg.nrrd, a map per method, the curves
    plot, the report) into ``out_dir``; returns them by role. ``listed_dir``: the folder the report names the files
    in, when they are written elsewhere first (segxai batch's staging folder, renamed into place afterwards)."""
    from .outputs import write_segmentation_outputs
    from .quality import plot_curves

    methods = list(result.methods)
    names = output_names(Path(out_dir), stem, methods, class_name, quality)
    listed = output_names(Path(listed_dir), stem, methods, class_name, quality) if listed_dir is not None else names
    write_segmentation_outputs(result.segmentation.labels, classes, out_dir, stem, overwrite)
    for name, m in result.methods.items():
        write_volume(m.map.like(m.map.array.astype("float32", copy=False)), names[name], overwrite)
    report = result.to_json()
    report["input"] = str(input_path)
    if reference_path:
        report["reference"] = str(reference_path)  # segxai review shows it and the metrics against it
    report["files"] = {k: str(v) for k, v in listed.items()}
    scored = dict({n: m.quality for n, m in result.methods.items()}, **{f"control: {n}": c for n, c in result.controls.items()})
    curves = {n: curve_of(q) for n, q in scored.items() if "deletion_curve" in q}
    if quality and curves:
        plot_curves(curves, names["curves"], f"{class_name} — {result.target.description}", overwrite)
    elif "curves" in names:
        report["files"].pop("curves")
    write_json_atomic(report, names["report"], overwrite)
    return names


def run(args) -> int:
    """Run ``segxai explain``; SegXAIError propagates to the main CLI, Ctrl-C returns 130."""
    from .explaining import explain_volume, parse_methods
    from .models import load_model
    from .targets import parse_region
    from .volume import read_volume

    progress = _ProgressLines() if getattr(args, "progress", "bar") == "lines" else _Progress()
    try:
        region = parse_region(args.region)
        out_dir = Path(args.output)
        model = load_model(args.model, "cpu")
        print(f"segxai: model: {model.describe()}", file=sys.stderr)
        methods = parse_methods(args.methods or [model.card.explanation.get("default_method", "gradcam")])
        reference = read_volume(args.reference) if args.reference else None
        info = model.card.class_named(args.target) if args.target else model.card.foreground[0]
        stem = file_stem(args.input)
        quality = not args.no_quality
        names = output_names(out_dir, stem, methods, info.name, quality)
        for path in names.values():
            refuse_overwrite(path, args.overwrite)
        volume = read_volume(args.input)
        result = explain_volume(volume, model, methods, info.name, region, args.layer, args.steps, args.baseline,
                                args.lrp_rule, args.device, quality, args.curve_steps, args.sanity, args.precision,
                                progress=progress, reference=reference, scores=args.scores.split(","),
                                lrp_epsilon=args.lrp_epsilon, lrp_gamma=args.lrp_gamma, occlusion_mm=args.occlusion_mm,
                                smooth=args.smooth, samples=args.samples, sigma=args.sigma, seed=args.seed)
        progress.close()
        write_explanation(result, model.card.classes, out_dir, stem, info.name, args.input, args.reference, quality,
                          overwrite=args.overwrite)
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
