"""``segxai export MODEL --format monai-bundle -o OUT``: a SegXAI model in another format; argument parsing and
messages only, the work is :mod:`SegXAILib.export_bundle`."""
from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``export`` sub-command to the ``segxai`` parser."""
    from .export_bundle import FORMATS

    p = subparsers.add_parser("export", help="write a SegXAI model as a MONAI bundle that monai.bundle runs unchanged")
    p.add_argument("model", nargs="?", default=None, help="bundled model name or model folder (default: the default "
                   "model); the residual U-Net exports, the TransUNet does not")
    p.add_argument("--format", choices=FORMATS, default="monai-bundle", help="output format (default: monai-bundle)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from .export_bundle import export_monai_bundle
    from .models.store import load_model

    model = load_model(args.model, "cpu")
    folder = export_monai_bundle(model, args.output, args.overwrite)
    print(f"wrote the MONAI bundle {folder} ({model.card.name}); run it with: python -m monai.bundle run "
          f"--config_file {folder}/configs/inference.json --bundle_root {folder} --dataset_dir DIR_OF_NIFTI_CTS")
    return 0
