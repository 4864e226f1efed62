"""The ``segxai`` command line: argument parsing and messages only; the work happens in the library.

Every user-facing problem arrives as a :class:`SegXAIError` and is printed as one line with a non-zero exit
code; Ctrl-C stops cleanly (writers are atomic, so no half-written file is left).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import Cancelled, SegXAIError

#: sub-commands provided by other modules, registered when they import (explain, scene)
PLUGINS = ("cli_explain", "cli_scene", "cli_review", "cli_export", "cli_batch")


# ---- shared helpers -----------------------------------------------------------------------------
def tqdm_progress(desc: str = ""):
    """A progress callback (stage, fraction) that drives one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    state = {"bar": None, "stage": None}

    def update(stage: str, fraction: float) -> None:
        if stage != state["stage"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=100, desc=f"{desc}{stage}", unit="%", leave=False, file=sys.stderr,
                                disable=not sys.stderr.isatty() and os.environ.get("SEGXAI_PROGRESS") != "1")
            state["stage"] = stage
        bar = state["bar"]
        bar.update(int(round(fraction * 100)) - bar.n)
        if fraction >= 1.0 and stage == "done":
            bar.close()

    return update


def expand_inputs(inputs: list) -> list:
    """Files as given; a folder holding volumes expands to them; a folder of DICOM slices stays one input."""
    from .volume import split_suffix

    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            volumes = sorted(q for q in p.iterdir() if q.is_file() and split_suffix(q.name)[1] and not q.name.endswith(".seg.nrrd"))
            out.extend(volumes if volumes else [p])
        else:
            out.append(p)
    return out


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="bundled model name, a folder with card.json, or an nnU-Net v2 "
                        "trained-model folder (dataset.json, plans.json, fold_N/) (default: the bundled default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--trust-model", action="store_true", help="let a MONAI bundle's config name any Python "
                        "(_target_ outside MONAI/torch, $ expressions): only for a bundle you trust")


# ---- segment ------------------------------------------------------------------------------------
def cmd_segment(args) -> int:
    from .models.store import load_model
    from .outputs import write_segmentation_outputs
    from .pipeline import segment
    from .volume import read_volume, refuse_overwrite, stem

    inputs = expand_inputs(args.inputs)
    out_dir = Path(args.output)
    stems = [stem(p) for p in inputs]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise SegXAIError(f"several inputs share the name {', '.join(clashes)}: their outputs would collide; segment them into separate folders")
    # refuse before any work if an output exists
    for p in inputs:
        for name in (f"{stem(p)}.seg.nrrd", f"{stem(p)}_labels.nii.gz"):
            refuse_overwrite(out_dir / name, args.overwrite)
    model = load_model(args.model)
    print(model.card.summary() if model.format == "segxai" else model.describe())
    for path in inputs:
        volume = read_volume(path)
        result = segment(volume, model, args.device, progress=tqdm_progress(f"{stem(path)}: "), name=str(path))
        files = write_segmentation_outputs(result.labels, model.card.classes, out_dir, stem(path), args.overwrite)
        print(f"{path}: {volume.shape[::-1]} voxels (i, j, k), {result.seconds['total']:.1f} s on {result.device}")
        for row in result.class_table():
            print(f"  {row['name']:<14} {row['voxels']:>10} voxels {row['volume_ml']:>10.1f} mL")
        for f in files.values():
            print(f"  wrote {f}")
    return 0


# ---- evaluate -----------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    from .evaluation import attach_to_card, errors_text, evaluate, table, write_reports
    from .models.store import load_model
    from .training import config_from_folders, load_config
    from .volume import refuse_overwrite

    model = load_model(args.model)
    print(model.card.summary() if model.format == "segxai" else model.describe())
    if args.config:
        cfg = load_config(args.config, args.data_root)
        cases = [c for c in cfg.cases if not args.cases or c.id in args.cases.split(",")]
    elif args.images and args.labels:
        cfg = config_from_folders(args.images, args.labels, [c.name for c in model.card.foreground], model.card.architecture, model.card.name)
        cases = cfg.cases
    else:
        raise SegXAIError("give --images DIR --labels DIR, or --config CONFIG.json [--cases id,id]")
    if not cases:
        raise SegXAIError("no case to evaluate (check --cases)")
    for name in ("evaluation.csv", "evaluation.json"):
        refuse_overwrite(Path(args.output) / name, args.overwrite)
    trained = {c.get("id") for c in model.card.training.get("cases", [])}
    results = evaluate(cases, model, args.device)
    print(table(results))
    errors = errors_text(results)
    if errors:
        print("largest errors (connected regions of at least 1 mL):\n" + errors)
    seen = [r["case"] for r in results if r["case"] in trained]
    if seen:
        print(f"note: {', '.join(seen)} were in this model's training data; their figures are not a test result")
    files = write_reports(results, args.output, model.card.name, args.overwrite)
    print(f"wrote {files['csv']} and {files['json']}")
    if args.write_card:
        card_path = model.folder / "card.json"
        command = "segxai " + shlex.join(a for a in args.argv if a not in ("--write-card", "--overwrite"))
        attach_to_card(results, card_path, command)
        print(f"wrote the figures into {card_path} (training cases under training_cases_not_a_test)")
    return 0


# ---- train --------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    import torch

    from .inference import choose_device
    from .training import config_from_folders, load_config, train, validate_config

    if args.config:
        cfg = load_config(args.config, args.data_root, exclude=tuple(args.exclude.split(",")) if args.exclude else ())
    elif args.images and args.labels:
        if not args.classes:
            raise SegXAIError("with --images/--labels, say what label values 1, 2, … mean: --classes liver,spleen")
        cfg = config_from_folders(args.images, args.labels, args.classes.split(","), args.arch, args.name or Path(args.output).name)
    else:
        raise SegXAIError("give --config CONFIG.json, or --images DIR --labels DIR --classes a,b --arch unet|transunet")
    if args.arch and args.config:
        arch = {"unet": "residual_unet", "transunet": "transunet3d"}.get(args.arch, args.arch)
        if arch != cfg.architecture:
            raise SegXAIError(f"--arch {args.arch} contradicts the config's architecture {cfg.architecture}")
    override_training(cfg, args)
    if args.validation is not None:
        cfg.validation = [v for v in args.validation.split(",") if v]
    validate_config(cfg)
    out = Path(args.output)
    if (out / "card.json").exists() and not args.overwrite:
        raise SegXAIError(f"{out} already holds a model; pass --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)
    train(cfg, out, choose_device(args.device), command="segxai " + shlex.join(args.argv))
    return 0


def add_training_options(p: argparse.ArgumentParser, steps_help: str) -> None:
    """--steps, --seed, --threads and --precision, shared by train and crossval (applied by :func:`override_training`)."""
    p.add_argument("--steps", type=int, help=steps_help)
    p.add_argument("--seed", type=int, help="overrides the config's seed (initial weights, patches, augmentation): "
                   "the same recipe run again, e.g. to see how much a fold varies from run to run")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="overrides the config: auto = bf16 autocast on a GPU or a CPU with AMX/AVX512-BF16")


def override_training(cfg, args) -> None:
    """The command line's --steps, --seed and --precision over the config's; a bad --threads fails here, before any work."""
    if args.threads is not None and args.threads < 1:
        raise SegXAIError(f"--threads must be at least 1, got {args.threads}")
    if args.steps is not None:
        cfg.train["steps"] = args.steps
    if args.seed is not None:
        cfg.train["seed"] = args.seed
    if args.precision:
        cfg.train["precision"] = args.precision


# ---- crossval -----------------------------------------------------------------------------------
def cmd_crossval(args) -> int:
    import torch

    from .folds import attach_to_card, collect, make_folds, markdown_table, run_fold
    from .inference import choose_device
    from .training import load_config

    if args.table:
        records = collect([args.output] + (args.more or []))
        if not records:
            raise SegXAIError(f"no finished fold under {args.output}")
        no_volume = tuple(c.strip() for c in (args.no_volume or "").split(",") if c.strip())
        print(markdown_table(records, no_volume))
        for card in args.write_card or []:
            n = attach_to_card(records, Path(card) / "card.json")
            print(f"wrote {n} fold(s) into {Path(card) / 'card.json'} (metrics.crossval)", file=sys.stderr)
        return 0
    if not args.config:
        raise SegXAIError("give --config CONFIG.json (or --table to print the folds already run)")
    cfg = load_config(args.config, args.data_root, cases_file=args.cases)
    override_training(cfg, args)
    folds = make_folds(cfg, args.scheme)
    if args.fold:
        wanted = args.fold.split(",")
        unknown = [f for f in wanted if f not in {x.name for x in folds}]
        if unknown:
            raise SegXAIError(f"unknown fold(s) {unknown}; this config has {[x.name for x in folds]}")
        folds = [f for f in folds if f.name in wanted]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    for fold in folds:
        record = run_fold(cfg, fold, args.output, device, command="segxai " + shlex.join(args.argv))
        for r in record["results"]:
            dice = ", ".join(f"{k} {v['dice']:.3f}" for k, v in r["classes"].items())
            print(f"{fold.name}: {r['case']}: {dice}")
    return 0


# ---- demo ---------------------------------------------------------------------------------------
def cmd_layers(args) -> int:
    """Print every explainable layer with its channels and resolution, the default and what the card measured."""
    from .explainers import default_layer
    from .layers import explainable_layers
    from .models import load_model

    model = load_model(args.model, "cpu")
    card = model.card
    layers = explainable_layers(model.network.eval(), card.patch, every=args.all)
    default = default_layer(card.architecture, model.network, card) if card.architecture != "torchscript" else ""
    measured = card.explanation.get("layers", {})
    print(f"{card.name}: {len(layers)} layers one can explain (window {'x'.join(map(str, card.patch))})")
    for info in layers:
        mark = "*" if info.name == default else " "
        note = measured.get(info.name, "")
        print(f" {mark} {info.describe()}" + (f"  [{note}]" if note else ""))
    if default:
        how = card.explanation.get("measured_by", "")
        print(f"* default layer: {default}" + (f" (chosen by {how})" if how else " (the architecture's documented layer)"))
    return 0


def cmd_demo(args) -> int:
    from .models.store import load_model, resources_dir
    from .outputs import write_segmentation_outputs
    from .pipeline import segment
    from .report import segmentation_montage
    from .volume import read_volume, refuse_overwrite

    sample = resources_dir() / "Samples" / "ct_totalseg_A.nii.gz"
    if not sample.exists():
        raise SegXAIError(f"the bundled sample {sample} is missing; is this a complete checkout?")
    out_dir = Path(args.output)
    png = out_dir / "demo.png"
    for name in ("demo.seg.nrrd", "demo_labels.nii.gz", "demo.png"):
        refuse_overwrite(out_dir / name, args.overwrite)
    model = load_model(args.model)
    print(model.card.summary() if model.format == "segxai" else model.describe())
    volume = read_volume(sample)
    result = segment(volume, model, args.device, progress=tqdm_progress("demo: "))
    files = write_segmentation_outputs(result.labels, model.card.classes, out_dir, "demo", overwrite=args.overwrite)
    segmentation_montage(volume, result.labels, model.card.classes, png, overwrite=args.overwrite, title=f"{model.card.name} on the bundled sample (TotalSegmentator, CC BY 4.0)")
    print(f"segmented the sample in {result.seconds['total']:.1f} s on {result.device}")
    for row in result.class_table():
        print(f"  {row['name']:<14} {row['volume_ml']:>10.1f} mL")
    print(f"wrote {files['segmentation']}, {files['labels']} and {png}")
    return 0


# ---- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segxai", description="Segment 3D CT and explain the segmentation.")
    parser.add_argument("--version", action="version", version=f"segxai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("segment", help="segment CT volumes: writes <stem>.seg.nrrd and <stem>_labels.nii.gz")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI/NRRD/MHA files, DICOM folders, or a folder of volumes")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_model_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="Dice, IoU, sensitivity, … of a model against reference labels")
    p.add_argument("--images", help="folder of CT volumes")
    p.add_argument("--labels", help="folder of label volumes with the same names (value n = model class n)")
    p.add_argument("--config", help="a training config (cases with per-case label meanings) instead of folders")
    p.add_argument("--cases", help="with --config: comma-separated case ids to evaluate (default: all)")
    p.add_argument("--data-root", help="with --config: folder the case paths are relative to")
    p.add_argument("-o", "--output", default="evaluation", help="folder for evaluation.csv and evaluation.json")
    add_model_args(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--write-card", action="store_true",
                   help="also write the figures into the model's card.json (metrics.held_out, or "
                        "metrics.training_cases_not_a_test for the cases it was trained on)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a residual U-Net or TransUNet; writes model.safetensors + card.json")
    p.add_argument("--config", help="training config JSON (see configs/)")
    p.add_argument("--data-root", help="folder the config's case paths are relative to")
    p.add_argument("--exclude", help="comma-separated case ids to leave out entirely (e.g. a test patient)")
    p.add_argument("--validation", help="comma-separated case ids held out and measured each epoch ('' for none)")
    p.add_argument("--images", help="folder of CT volumes")
    p.add_argument("--labels", help="folder of label volumes with matching names")
    p.add_argument("--classes", help="with --images/--labels: names of label values 1, 2, … (e.g. liver,spleen)")
    p.add_argument("--arch", choices=["unet", "transunet", "residual_unet", "transunet3d"], help="architecture")
    p.add_argument("--name", help="model name (default: the output folder's name)")
    add_training_options(p, "training steps (overrides the config)")
    p.add_argument("-o", "--output", required=True, help="model folder to write")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("crossval", help="leave-one-patient-out or cross-dataset folds: train, then score the cases left out")
    p.add_argument("--config", help="training config JSON whose cases (with patient and dataset fields) make the folds")
    p.add_argument("--data-root", help="folder the config's case paths are relative to")
    p.add_argument("--cases", help="a case list (JSON with cases and data_root) that replaces the config's cases, e.g. configs/cases/all-patients.json")
    p.add_argument("--scheme", choices=["lopo", "cross-dataset"], default="lopo")
    p.add_argument("--fold", help="comma-separated fold names to run (default: all; run two processes for two cores)")
    add_training_options(p, "training steps per fold (overrides the config)")
    p.add_argument("-o", "--output", required=True, help="folder for <fold>/model and <fold>/evaluation.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--table", action="store_true", help="print the Markdown table of the folds already run under -o (and --more)")
    p.add_argument("--more", nargs="*", help="with --table: other crossval folders to put side by side")
    p.add_argument("--no-volume", help="with --table: case ids whose spacing is assumed, so mL are not reported")
    p.add_argument("--write-card", nargs="*", metavar="MODEL_DIR", help="with --table: also write the folds run with each model's recipe into its card.json")
    p.set_defaults(func=cmd_crossval)

    p = sub.add_parser("layers", help="list the layers of a model one can explain with a CAM (--layer NAME)")
    p.add_argument("model", nargs="?", default=None, help="bundled model name or model folder (default: the default model)")
    p.add_argument("--all", action="store_true", help="also the layers inside each block (convolutions, norms, activations)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("demo", help="segment the bundled sample CT and draw a picture")
    p.add_argument("-o", "--output", default="segxai-demo", help="output folder (default: segxai-demo)")
    add_model_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo")
    p.set_defaults(func=cmd_demo)

    import importlib

    for plugin in PLUGINS:
        try:
            module = importlib.import_module(f"{__package__}.{plugin}")
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.simplefilter("ignore", category=FutureWarning)
    if getattr(args, "trust_model", False):  # read where a MONAI bundle's config is checked (models/adapters)
        os.environ["SEGXAI_TRUST_MODEL"] = "1"
    try:
        return int(args.func(args) or 0)
    except Cancelled as err:
        print(f"segxai: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("segxai: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except SegXAIError as err:
        print(f"segxai: error: {err}", file=sys.stderr)
        return 1
    except MemoryError:
        print("segxai: error: out of memory; try a smaller input or a machine with more memory", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
