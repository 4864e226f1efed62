"""``segxai scene``: segment (and explain) a CT and write a Slicer scene for batch review without the module.

Runs the same job as the Slicer module's background process (:mod:`SegXAILib.slicer_run`), then builds the
scene with :mod:`SegXAILib.scene` under slicer-core and saves ``<stem>.mrml`` with its .nrrd/.seg.nrrd files.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import SegXAIError


def register(subparsers) -> None:
    """Add the ``scene`` sub-command to the ``segxai`` parser."""
    from .slicer_run import METHODS

    p = subparsers.add_parser("scene", help="segment (+ explain) a CT and write a Slicer scene (.mrml + .nrrd + .seg.nrrd)")
    p.add_argument("input", metavar="INPUT", help="a NIfTI/NRRD/MHA file or a DICOM folder")
    p.add_argument("-o", "--output", required=True, help="output folder for <stem>.mrml and its data files")
    p.add_argument("--methods", nargs="*", default=[], metavar="METHOD",
                   help=f"explanation methods ({', '.join(METHODS)}); none: segmentation only")
    p.add_argument("--target", default=None, help="class to explain (default: the explaining step's default)")
    p.add_argument("--region", default="predicted", help="predicted, whole, point:R,A,S[:RADIUS] or mask:FILE")
    p.add_argument("--layer", default=None, help="layer for the CAM methods (default: the architecture's)")
    p.add_argument("--steps", type=int, default=None, help="integrated-gradients steps")
    p.add_argument("--quality", action="store_true", help="add the explanation scores (energy inside, pointing game, curves; slow)")
    p.add_argument("--model", default=None, help="bundled model name or a folder with card.json")
    p.add_argument("--trust-model", action="store_true", help="let a MONAI bundle's config name any Python "
                   "(_target_ outside MONAI/torch, $ expressions): only for a bundle you trust")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--scale", default="family", choices=("family", "map"),
                   help="colour scale of the maps: 'family' (maps of one method family share it, so they compare) "
                        "or 'map' (each map its own); the volumes keep raw values either way")
    p.add_argument("--no-3d", dest="show_3d", action="store_false", help="do not build the segments' 3D surfaces")
    p.add_argument("--overwrite", action="store_true", help="replace an existing scene")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the job into a temporary folder, build the scene from its files, save it to ``args.output``."""
    from .slicer_run import load_job, options_from, run_job
    from .volume import read_volume, stem

    from . import scene as bridge

    bridge.require_slicer()

    methods = []
    for item in args.methods or []:
        methods += [m for m in item.replace(",", " ").split() if m]
    options = options_from(Path(args.input).resolve(), args.model, args.device, methods, args.target, args.region,
                           args.layer, args.steps, getattr(args, "quality", False))
    out_dir = Path(args.output)
    mrml = out_dir / f"{stem(args.input)}.mrml"
    if mrml.exists() and not args.overwrite:
        raise SegXAIError(f"{mrml} exists; pass --overwrite to replace it, or choose another output folder")
    progress = _progress()
    with tempfile.TemporaryDirectory(prefix="segxai-scene-") as work:
        job = load_job(run_job(options, work, progress=progress))
        ct = read_volume(args.input)
        scene = bridge.new_headless_scene() if not bridge.in_slicer_app() else bridge.ensure_scene()
        input_node = bridge.add_volume_node(ct, stem(args.input), scene)
        display = input_node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(-160.0, 240.0)  # abdomen window
        nodes = bridge.show_results(input_node, job["labels"], job["classes"], job["maps"], job["provenance"], scene,
                                    class_metrics=card_metrics(args.model), scale=getattr(args, "scale", "family"),
                                    show_3d=getattr(args, "show_3d", True))
        path = bridge.save_scene(mrml, scene, overwrite=args.overwrite)
    table = job["manifest"]["class_table"]
    print(f"{args.input}: segmented with {job['manifest']['model']} on {job['manifest']['device']}")
    for row in table:
        print(f"  {row['name']:<14} {row['voxels']:>10} voxels {row['volume_ml']:>10.1f} mL")
    hidden = (nodes["segmentation"].GetAttribute("SegXAI.HiddenClasses") or "") if nodes["segmentation"] else ""
    if hidden:
        print(f"  not shown (the model card reports them found on no measured patient): {hidden}")
    for node in nodes["maps"]:
        print(f"  map {node.GetAttribute('SegXAI.Method')}: {node.GetName()}")
    print(f"wrote {path} (open it in 3D Slicer: File > Add Data, or drag and drop)")
    return 0


def card_metrics(model) -> dict:
    """The ``metrics`` of the model card (what it measured, per class), {} when the card has none."""
    from .display import card_metrics as read_metrics
    from .models.store import resolve_model_folder

    return read_metrics(resolve_model_folder(model) / "card.json")


def _progress():
    try:
        from .cli import tqdm_progress

        return tqdm_progress("scene: ")
    except ImportError:
        return None
