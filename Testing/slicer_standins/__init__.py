"""Run SegXAI's Slicer module against Slicer 5.8.1's own Python (``../shared/slicer-5.8.1``) without Slicer.

:func:`install` puts small stand-ins for ``qt`` and ``ctk`` into ``sys.modules``, appends Slicer's
``Base/Python/slicer`` to slicer-core's ``slicer`` package (so ``slicer.parameterNodeWrapper`` and
``slicer.ScriptedLoadableModule`` are Slicer's real files), and gives ``slicer`` a real MRML scene, the Qt MRML
widget stand-ins and a minimal ``slicer.app``. Use it only in a test subprocess: it changes global modules.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLICER_581 = ROOT.parent / "shared" / "slicer-5.8.1"
SLICER_PYTHON = SLICER_581 / "Base" / "Python" / "slicer"


class ModuleManager:
    def __init__(self):
        self.connections = []

    def connect(self, signal, slot):
        self.connections.append((signal, slot))


class CommandOptions:
    testingEnabled = False


class App:
    """The few ``slicer.app`` calls a scripted module makes while its panel opens."""

    def __init__(self):
        self._moduleManager = ModuleManager()
        self.connections = []
        self.cursor = []

    def moduleManager(self):
        return self._moduleManager

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def translate(self, context, text):
        return text

    def testingEnabled(self):
        return False

    def commandOptions(self):
        return CommandOptions()

    def setOverrideCursor(self, cursor):
        self.cursor.append(cursor)

    def restoreOverrideCursor(self):
        if self.cursor:
            self.cursor.pop()

    def processEvents(self):
        pass

    def topLevelWidgets(self):
        return []

    def layoutManager(self):
        return None


def install(module_path: Path = ROOT / "SegXAI" / "SegXAI.py", with_module_logics: bool = False):
    """Install the stand-ins and Slicer's real Python; returns the ``slicer`` package.

    ``with_module_logics``: a scene with slicer-core's module logics (needed to put results in the scene)."""
    if not SLICER_PYTHON.is_dir():
        raise RuntimeError(f"Slicer 5.8.1's Python is not at {SLICER_PYTHON}")
    here = Path(__file__).resolve().parent
    sys.modules["qt"] = importlib.import_module(f"{__name__}.qt")
    sys.modules["ctk"] = importlib.import_module(f"{__name__}.ctk")
    import slicer  # slicer-core: MRML, and its slicer.util
    import vtk  # noqa: F401

    if str(SLICER_PYTHON) not in slicer.__path__:
        slicer.__path__.append(str(SLICER_PYTHON))
    widgets = importlib.import_module(f"{__name__}.mrml_widgets")
    for name in dir(widgets):
        if name.startswith("qMRML"):
            setattr(slicer, name, getattr(widgets, name))
    if with_module_logics:  # slicer-core's logics (segmentations, volumes, …), as SegXAILib.scene builds them
        from SegXAILib import scene

        scene.new_headless_scene()
    else:
        slicer.mrmlScene = slicer.vtkMRMLScene()
        slicer.modules = types.SimpleNamespace()
    slicer.modules.segxai = types.SimpleNamespace(path=str(module_path))
    slicer.app = App()
    import slicer.ScriptedLoadableModule as scripted
    import slicer.parameterNodeWrapper as wrapper

    for required in (scripted, wrapper):  # Slicer 5.8.1's files, not slicer-core's
        assert Path(required.__file__).resolve().is_relative_to(SLICER_PYTHON.resolve()), required.__file__
    del here
    return slicer


def block_imports(*names: str) -> None:
    """Make ``import name`` fail as on a fresh Slicer (and ``importlib.util.find_spec(name)`` return None)."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]
        sys.modules[name] = None
