"""``segxai review OUT_DIR``: the results of ``segxai explain`` in a browser, drawn by Slicer's own views.

Argument parsing and messages only; the page is :mod:`SegXAILib.review`. Without the ``web`` extra it says in
one line what to install.
"""
from __future__ import annotations

from .errors import SegXAIError

#: what ``pip install -e ".[web]"`` brings (trame-slicer 2.0's layer-dm is built against slicer-core 5.11 / vtk 9.6.0)
WEB_PINS = "trame-slicer==2.0.0 slicer-layer-dm==2.0.0 slicer-core==5.11.0.6 vtk==9.6.0"
INSTALL_HINT = f'segxai review needs the web extra: pip install -e ".[web]" (or pip install {WEB_PINS})'


def register(subparsers) -> None:
    """Add the ``review`` sub-command to the ``segxai`` parser."""
    p = subparsers.add_parser("review", help="show a segxai explain folder in the browser (Slicer's views via trame-slicer)")
    p.add_argument("folder", metavar="OUT_DIR", help="the folder segxai explain wrote (one or several cases)")
    p.add_argument("--ct", default=None, help="the CT the maps explain, when it is neither in OUT_DIR nor at the "
                   "report's input path")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine "
                   "only; another one requires a token, made when --token is not given)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--token", default=None, help="secret the URL must carry (at least 16 characters)")
    p.set_defaults(func=run)


def require_web() -> None:
    """A one-line SegXAIError naming what to install when trame-slicer (or its slicer-core) cannot be imported."""
    try:
        import trame  # noqa: F401
        import trame_slicer.core  # noqa: F401
        import trame_slicer.rca_view  # noqa: F401
    except ImportError:
        raise SegXAIError(INSTALL_HINT) from None


def run(args) -> int:
    require_web()
    from .review.server import ReviewApp, choose_token

    if not (0 <= args.port <= 65535):
        raise SegXAIError(f"--port must be between 0 and 65535, got {args.port}")
    token = choose_token(args.host, args.token)
    app = ReviewApp(args.folder, ct=args.ct, token=token)
    app.serve(args.host, args.port, announce=lambda url: print(f"segxai review: open {url}  (Ctrl-C stops)", flush=True))
    return 0
