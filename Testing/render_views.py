"""Pictures of a saved SegXAI scene drawn by Slicer's own slice and 3D views (trame-slicer, offscreen).

Test helper, not product code: it loads a ``.mrml`` the way Slicer would and reads the pixels back, so the
rendering tests judge what a user sees instead of node attributes. Needs ``trame-slicer`` with a slicer-core
it supports (``slicer-layer-dm``); :func:`require_renderer` skips the caller's test when they are missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X display: EGL first, OSMesa after

ORIENTATIONS = {"Axial": "axial_view", "Sagittal": "sagittal_view", "Coronal": "coronal_view"}


#: what the rendering tests need (trame-slicer 2.0's layer-dm is built against slicer-core 5.11, which pins vtk 9.6.0)
RENDER_PINS = "trame-slicer==2.0.0 slicer-layer-dm==2.0.0 slicer-core==5.11.0.6 vtk==9.6.0"


def require_renderer():
    """Skip the calling test when trame-slicer or the slicer-core it needs cannot be imported; fail instead
    when ``SEGXAI_REQUIRE_RENDER=1`` (CI), so the pictures are never skipped there unnoticed."""
    import pytest

    try:
        import trame_slicer.core  # noqa: F401
    except ImportError as error:  # trame-slicer missing, or its compiled layer-dm does not match slicer-core
        message = f"trame-slicer cannot render here ({error}); pip install {RENDER_PINS}"
        if os.environ.get("SEGXAI_REQUIRE_RENDER") == "1":
            pytest.fail(message)
        pytest.skip(message)


class Renderer:
    """One trame-slicer application (scene + logics + offscreen views) showing one loaded scene."""

    def __init__(self, size: tuple = (192, 192)):
        from trame_slicer.core import SlicerApp
        from trame_slicer.views import DirectViewFactory

        self.size = tuple(int(s) for s in size)
        self.app = SlicerApp()
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        self.scene = self.app.scene
        self._register_missing_node_classes()
        self._views = {}

    def _register_missing_node_classes(self) -> None:
        """Node classes Slicer's module logics register and trame-slicer's app does not (colour legends)."""
        import slicer

        for name in ("vtkMRMLColorLegendDisplayNode",):
            maker = getattr(slicer, name, None)
            if maker is not None and not self.scene.GetClassNameByTag(maker().GetNodeTagName()):
                self.scene.RegisterNodeClass(maker())

    def load(self, mrml) -> "Renderer":
        """Import a ``.mrml`` (and its data files) into this application's scene."""
        self.scene.SetURL(str(Path(mrml).resolve()))
        if not self.scene.Import():
            raise RuntimeError(f"could not import {mrml}")
        return self

    def slice_view(self, orientation: str = "Axial"):
        """The slice view of ``orientation`` (created on first use; singleton tags Red/Yellow/Green)."""
        from trame_slicer.views import ViewLayoutDefinition

        if orientation not in self._views:
            definition = getattr(ViewLayoutDefinition, ORIENTATIONS[orientation])()
            view = self.app.view_manager.create_view(definition)
            view.render_window().SetSize(*self.size)
            self._views[orientation] = view
        return self._views[orientation]

    def threed_view(self):
        """The 3D view (created on first use)."""
        from trame_slicer.views import ViewLayoutDefinition

        if "3D" not in self._views:
            view = self.app.view_manager.create_view(ViewLayoutDefinition.threed_view())
            view.render_window().SetSize(*self.size)
            self._views["3D"] = view
        return self._views["3D"]

    def render_slice(self, orientation: str = "Axial", offset: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 of the slice view fitted to its background volume, at ``offset`` mm (default: centre)."""
        view = self.slice_view(orientation)
        view.fit_view_to_content()
        if offset is not None:
            view.set_slice_value(float(offset))
        return grab(view)

    def render_3d(self) -> np.ndarray:
        """(H, W, 3) uint8 of the 3D view with the camera reset to what is visible."""
        view = self.threed_view()
        view.fit_view_to_content()
        return grab(view)


def grab(view) -> np.ndarray:
    """Render ``view`` now and read its back buffer as (H, W, 3) uint8, first row at the top."""
    import vtk
    from vtk.util import numpy_support

    window = view.render_window()
    view.render()
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(window)
    capture.ReadFrontBufferOff()
    capture.SetInputBufferTypeToRGB()
    capture.Update()
    image = capture.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


def save_png(pixels: np.ndarray, path) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG (Pillow) and return its path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)
    return path


def side_by_side(*pictures: np.ndarray, gap: int = 4) -> np.ndarray:
    """Pictures of the same height in one row, separated by a white gap."""
    h = max(p.shape[0] for p in pictures)
    parts = []
    for p in pictures:
        pad = np.zeros((h, p.shape[1], 3), np.uint8)
        pad[: p.shape[0]] = p
        parts += [pad, np.full((h, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)
