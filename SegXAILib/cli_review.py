"""``segxai review OUT_DIR`` (the results of ``segxai explain``) or ``segxai review CT --model M --methods …``
(computed first, with progress in the page): in a browser, drawn by Slicer's own views.

Argument parsing and messages only; the page is :mod:`SegXAILib.review`. Without the ``web`` extra it says in
one line what to install.
"""
from __future__ import annotations

from pathlib import Path

from .errors import SegXAIError

#: what ``pip install -e ".[web]"`` brings (trame-slicer 2.0's layer-dm is built against slicer-core 5.11 / vtk 9.6.0)
WEB_PINS = "trame-slicer==2.0.0 slicer-layer-dm==2.0.0 slicer-core==5.11.0.6 vtk==9.6.0"
INSTALL_HINT = f'segxai review needs the web extra: pip install -e ".[web]" (or pip install {WEB_PINS})'


def register(subparsers) -> None:
    """Add the ``review`` sub-command to the ``segxai`` parser."""
    p = subparsers.add_parser("review", help="show segxai explain results in the browser (Slicer's views via "
                              "trame-slicer); given a CT, compute them first")
    p.add_argument("folder", metavar="OUT_DIR_OR_CT", help="the folder segxai explain wrote (one or several cases), "
                   "or a CT (file or DICOM folder) to segment and explain first, its progress shown in the page")
    p.add_argument("--ct", default=None, help="the CT the maps explain, when it is neither in OUT_DIR nor at the "
                   "report's input path")
    p.add_argument("--reference", default=None, help="reference label volume of the case (the explained class's "
                   "label value, or a single-organ mask): drawn as a white outline, with Dice, HD95 … against it "
                   "(default: the one segxai explain --reference recorded)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine "
                   "only; another one requires a token, made when --token is not given)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--token", default=None, help="secret the URL must carry (at least 16 characters)")
    computing = p.add_argument_group("computing first (given a CT): passed to segxai explain")
    computing.add_argument("-o", "--output", default=None, help="keep the results in this folder (default: a "
                           "temporary folder, removed when the review stops)")
    computing.add_argument("--model", default=None, help="bundled model name or model folder")
    computing.add_argument("--methods", default=None, help="comma-separated explanation methods")
    computing.add_argument("--target", default=None, help="class to explain")
    computing.add_argument("--region", default=None, help="predicted | whole | point:R,A,S[:RADIUS] | mask:FILE")
    computing.add_argument("--layer", default=None, help="layer for the CAM methods")
    computing.add_argument("--steps", type=int, default=None, help="Integrated Gradients steps")
    computing.add_argument("--scores", default=None, help="score groups (see segxai explain --help)")
    computing.add_argument("--no-quality", action="store_true", help="skip the quality scores and curves (faster)")
    computing.add_argument("--trust-model", action="store_true", help="see segxai explain --help")
    computing.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.set_defaults(func=run)


def require_web() -> None:
    """A one-line SegXAIError naming what to install when trame-slicer (or its slicer-core) cannot be imported."""
    try:
        import trame  # noqa: F401
        import trame_slicer.core  # noqa: F401
        import trame_slicer.rca_view  # noqa: F401
    except ImportError:
        raise SegXAIError(INSTALL_HINT) from None


def is_results_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding a ``segxai explain`` report, or sub-folders that do (``segxai batch``)."""
    from .review.folder import report_places

    return path.is_dir() and bool(report_places(path.resolve()))


def plan(args):
    """``(results_folder, job)``: a results folder to show (job None), or a job that computes into a folder first.

    One clear error for an input that is neither, and for computing options given with a results folder."""
    from .review.compute import PASSED, ExplainJob, explain_options

    compute_only = ["output"] + [n for n in PASSED if n != "reference"]  # --reference also applies to results
    given = Path(args.folder)
    if not given.exists():
        raise SegXAIError(f"{given} does not exist; give the folder segxai explain wrote, or a CT to compute first")
    if is_results_folder(given):
        extra = [f"--{n.replace('_', '-')}" for n in compute_only if getattr(args, n, None) not in (None, False)]
        if extra:
            raise SegXAIError(f"{given} holds segxai explain results already: {', '.join(extra)} only apply when "
                              f"computing from a CT (segxai review CT --model M ...)")
        return given, None
    if given.is_dir() and not any(p.is_file() for p in given.rglob("*")):
        raise SegXAIError(f"{given} is empty: give the folder segxai explain wrote, or a CT to compute first")
    if args.output:
        out = Path(args.output)
        if out.exists() and any(out.iterdir()):
            raise SegXAIError(f"{out} is not empty; choose a new folder for the results (-o), or review it as it is")
    return None, ExplainJob(given, Path(args.output) if args.output else None, explain_options(args))


def run(args) -> int:
    require_web()
    from .review.server import ReviewApp, choose_token

    if not (0 <= args.port <= 65535):
        raise SegXAIError(f"--port must be between 0 and 65535, got {args.port}")
    token = choose_token(args.host, args.token)
    folder, job = plan(args)
    app = ReviewApp(folder, ct=args.ct, token=token, reference=args.reference, job=job)
    if job is not None and args.output is None:
        print("segxai review: the results go to a temporary folder, removed when the review stops (keep them: -o DIR)",
              flush=True)
    app.serve(args.host, args.port, announce=lambda url: print(f"segxai review: open {url}  (Ctrl-C stops)", flush=True))
    return 0
