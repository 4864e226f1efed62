"""The ``segxai review`` server: a trame-slicer application (Slicer's slice and 3D views, streamed to the
browser) showing the cases of one results folder.

Safety: binds to 127.0.0.1 unless told otherwise; any other interface needs a token that the URL carries
(then kept in an HTTP-only cookie); no route serves the results folder (the views are pictures the server draws);
the scenes are built in a private temporary folder, so the results folder is only read.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import sys
from pathlib import Path
from typing import Optional

from ..errors import SegXAIError
from . import folder as results
from .curves import curves_html, curves_of
from .page import build_ui, scores_table
from .session import CaseScene, build_scene_file, case_reference, map_entries, new_work_dir, read_labels

TOKEN_COOKIE = "segxai_review_token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_middleware(token: str):
    """aiohttp middleware: a request passes with ``?token=`` or the cookie it sets; anything else gets 403."""
    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=403, text="segxai review: this page needs the token its URL carries\n")
        response = await handler(request)
        if request.query.get("token") and hasattr(response, "set_cookie"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return check


class ReviewApp:
    """The cases of one folder in one trame-slicer application; with ``job`` (an :class:`~.compute.ExplainJob`),
    the folder is first filled by ``segxai explain`` while the page shows its progress."""

    def __init__(self, out_dir, ct: Optional[str] = None, token: Optional[str] = None, server_name: str = "segxai-review",
                 reference: Optional[str] = None, job=None):
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.token, self.ct, self.reference, self.job = token, ct, reference, job
        self.work = new_work_dir()
        if job is not None:
            job.out_dir = Path(job.out_dir or Path(self.work.name) / "results")
            job.out_dir.mkdir(parents=True, exist_ok=True)
            self.folder, self.cases = job.out_dir.resolve(), {}
        else:
            self.folder = Path(out_dir).resolve()
            self.cases = {c.key: c for c in results.find_cases(self.folder, ct)}
            if reference and len(self.cases) > 1:
                raise SegXAIError(f"--reference names one case's reference, and {self.folder} holds {len(self.cases)} "
                                  f"cases; give each its own with segxai explain --reference (the review shows it)")
        self.server = get_server(server_name, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.app = SlicerApp()
        self._register_missing_node_classes()
        register_rca_factories(self.app.view_manager, self.server, rca_encoder="png",
                               slice_view_ui_f=lambda *a: None, three_d_view_ui_f=lambda *a: None)
        self.layout = LayoutManager(self.app.scene, self.app.view_manager, self.server)
        self.layout.register_layout_dict(LayoutManager.default_grid_configuration())
        self.current: Optional[CaseScene] = None
        self.curves: dict = {}
        state = self.server.state
        state.trame__title = "SegXAI review"
        state.cases = list(self.cases)
        state.case_name = state.cases[0] if state.cases else ""
        state.computing = job is not None
        state.progress, state.progress_error = [], ""
        state.progress_stage = "loading the model" if job is not None else ""
        state.metrics, state.reference_note, state.curves_html = [], "", ""
        # every key the page binds exists from the start (a key first set later, after computing, would not be shown)
        state.legend, state.notes, state.method, state.methods, state.about, state.scores = "", "", "", [], [], []
        state.segments = []
        title = f"SegXAI review — {job.ct.name if job is not None else self.folder.name}"
        build_ui(self.server, self.layout, title)
        self.layout.set_layout("Quad View")
        if state.case_name:
            self.load_case(state.case_name)
        state.change("case_name")(self._on_case)
        state.change("method", "opacity", "faint")(self._on_display)
        if token:
            self.server.controller.on_server_bind.add(self._protect)
        if job is not None:
            self.server.controller.on_server_ready.add(self._start_job)
            self.server.controller.on_server_exited.add(lambda **_: job.cancel())

    # ---- computing first ------------------------------------------------------------------------
    def _start_job(self, **_) -> None:
        import asyncio

        self._job_task = asyncio.get_event_loop().create_task(self._run_job())

    def _show_progress(self, job) -> None:
        state = self.server.state
        with state:
            state.progress = job.lines()
            state.progress_stage = job.stages[-1].name if job.stages else "loading the model"

    async def _run_job(self) -> None:
        """Follow the explain process; when it is done, show its case (or its one-line error)."""
        job, state = self.job, self.server.state
        try:
            code = await job.run(self._show_progress)
        except Exception as error:  # the process could not start: say so in the page, keep serving
            code, job.messages = -1, job.messages + [f"segxai: error: could not start segxai explain: {error}"]
            job.returncode = code
        with state:
            state.computing = False
            if code != 0:
                state.progress_error = job.error or f"segxai explain exited with {code}"
                return
            try:
                self.cases = {c.key: c for c in results.find_cases(self.folder, self.ct)}
                state.cases = list(self.cases)
                state.case_name = state.cases[0]
                self.load_case(state.case_name)
            except SegXAIError as error:
                state.progress_error = str(error)
            except Exception as error:  # shown in the page, and the traceback on the console for a bug report
                import traceback

                traceback.print_exc()
                state.progress_error = f"the results could not be shown: {error}"

    def _register_missing_node_classes(self) -> None:
        """Colour legends: a node class Slicer's module logics register and trame-slicer's app does not."""
        import slicer

        maker = getattr(slicer, "vtkMRMLColorLegendDisplayNode", None)
        if maker is not None and not self.app.scene.GetClassNameByTag(maker().GetNodeTagName()):
            self.app.scene.RegisterNodeClass(maker())

    def _protect(self, wslink_server) -> None:
        wslink_server.app.middlewares.append(token_middleware(self.token))

    # ---- cases and controls -------------------------------------------------------------------
    def load_case(self, key: str) -> None:
        """Build the case's scene (private folder), import it into the views' scene, show its first map."""
        from .. import display as look

        if key not in self.cases:  # the page can only name a case of this folder
            raise SegXAIError(f"no case {key!r} in {self.folder}")
        case = self.cases[key]
        entries = map_entries(case)
        labels = read_labels(case)
        reference, note = case_reference(case, self.reference, labels)
        mrml = build_scene_file(case, Path(self.work.name) / "scenes" / f"case-{list(self.cases).index(key)}", reference,
                                labels)
        scene = self.app.scene
        if self.current is not None:  # the previous case's nodes go, with their display and storage nodes
            from .. import scene as bridge

            bridge.remove_segxai_nodes(scene, self.current.ct_node)
            bridge._remove_with_companions(scene, self.current.ct_node)
        scene.SetURL(str(mrml))
        if not scene.Import():
            raise SegXAIError(f"could not load the scene of {key}")
        self.current = CaseScene(scene, case, entries, labels)
        state = self.server.state
        state.methods = [{"name": m, "title": look.method_info(m).title} for m in self.current.methods]
        state.about = [{"name": k, "text": v} for k, v in case.describe().items() if v]
        state.notes = "; ".join(case.notes)
        state.segments = segment_legend(case, reference)
        state.metrics = reference.rows() if reference is not None else []
        state.reference_note = note
        self.curves = curves_of(case.report)
        state.method = self.current.method or ""
        self._on_display(method=state.method, opacity=state.opacity or look.DEFAULT_OPACITY,
                         faint=state.faint if state.faint is not None else look.FAINT)
        for view in self.app.view_manager.get_views():
            self._fit_on_resize(view)
            view.fit_view_to_content()
        self.current.centre_slices()
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    def _fit_on_resize(self, view) -> None:
        """Fit the view to the case again whenever the browser gives it a new size (the first size arrives only
        once the page is drawn), so the whole CT is in sight."""
        from vtkmodules.vtkCommonCore import vtkCommand

        interactor = view.render_window().GetInteractor()  # trame-rca's window sends its resizes through it
        if interactor is None or getattr(view, "_segxai_fits", False):
            return

        def refit(*_):
            view.fit_view_to_content()
            if self.current is not None:
                self.current.centre_slices()
            view.schedule_render()

        interactor.AddObserver(vtkCommand.WindowResizeEvent, refit, -1.0)  # after the view's own resize handling
        view._segxai_fits = True

    def _on_case(self, case_name, **_):
        if not case_name:  # no case yet (still computing)
            return
        if self.current is None or case_name != self.current.case.key:
            self.load_case(case_name)

    def _on_display(self, method=None, opacity=None, faint=None, **_):
        current = self.current
        if current is None:
            return
        if method not in current.map_nodes:
            method = current.method
        current.show(method, opacity, faint)
        state = self.server.state
        state.legend = current.legend()
        state.scores = scores_table(current.entries[current.method][1]) if current.method else []
        state.curves_html = curves_html(self.curves, current.method) if current.method else ""
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    # ---- serving --------------------------------------------------------------------------------
    def url(self, host: str, port: int) -> str:
        """The address to open: on every interface (0.0.0.0, ::) this machine's name, with the token if any."""
        import socket

        shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")

    def serve(self, host: str = "127.0.0.1", port: int = 0, announce=print) -> None:
        """Serve until interrupted; ``announce`` gets the URL once the server listens."""
        def ready(**_):
            announce(self.url(host, self.server.port))
            sys.stdout.flush()

        self.server.controller.on_server_ready.add(ready)
        argv, sys.argv = sys.argv, sys.argv[:1]  # trame parses the process's arguments: give it none of ours
        try:
            self.server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
        finally:
            sys.argv = argv
            if self.job is not None:
                self.job.cancel()
            self.work.cleanup()


def segment_legend(case, reference=None) -> list:
    """``[{name, color}]``: the case's segments as the views draw them (name, CSS colour), and the reference's."""
    from .. import display as look

    rows = [{"name": c.name, "color": "rgb({}, {}, {})".format(*c.color)}
            for c in results.segment_classes(case) if c.value != 0]
    if reference is not None:
        rows.append({"name": f"reference {case.target_class}", "color": "rgb({}, {}, {})".format(*look.REFERENCE_COLOR)})
    return rows


def choose_token(host: str, token: Optional[str]) -> Optional[str]:
    """The token to require: the one given; a new random one for a non-loopback host; None on loopback."""
    if token:
        if len(token) < 16:
            raise SegXAIError("--token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)
