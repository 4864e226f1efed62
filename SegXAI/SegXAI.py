"""SegXAI 3D Slicer module: segment a CT and explain the segmentation, results shown in the scene.

A thin front door: widgets, parameters and the background process live here; every decision (segmentation,
explanation, which nodes, colours, windows, metrics) is made in SegXAILib (``scene``, ``slicer_run``).
"""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Python packages SegXAILib needs besides what Slicer ships (numpy and SimpleITK are never reinstalled)
REQUIREMENTS = {"monai": "monai>=1.3", "safetensors": "safetensors", "slicerio": "slicerio", "nrrd": "pynrrd", "tqdm": "tqdm"}
LOAD_MODEL_ITEM = "Load model…"


# ---- Module -------------------------------------------------------------------------------------
class SegXAI(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegXAI"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegXAI developers"]
        self.parent.helpText = (
            "Segment a CT volume with a bundled 3D U-Net and explain the segmentation (Grad-CAM, HiResCAM, "
            "Grad-CAM++, integrated gradients, LRP). Maps are shown over the CT on its exact grid. "
            "Research and education only; not for clinical use."
        )
        self.parent.acknowledgementText = (
            "Sample CT and reference labels: TotalSegmentator test data (Wasserthal et al., Radiology: AI 2023), CC BY 4.0."
        )


# ---- Parameters ---------------------------------------------------------------------------------
@parameterNodeWrapper
class SegXAIParameterNode:
    """The module's settings, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    device: str = "auto"
    gradcam: bool = True
    hirescam: bool = False
    gradcampp: bool = False
    ig: bool = False
    lrp: bool = False
    region: str = "predicted"
    regionPoint: vtkMRMLMarkupsFiducialNode
    regionRadius: Annotated[float, WithinRange(1.0, 100.0)] = 10.0
    layer: str = ""
    igSteps: Annotated[int, WithinRange(2, 256)] = 32
    computeQuality: bool = False
    referenceSegmentation: vtkMRMLSegmentationNode
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4


METHOD_FIELDS = ("gradcam", "hirescam", "gradcampp", "ig", "lrp")


# ---- Widget -------------------------------------------------------------------------------------
class SegXAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: collects settings, starts/cancels the background run, shows progress and results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelPaths = {}
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegXAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegXAILogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.regionComboBox.connect("currentIndexChanged(int)", self.updateRegionWidgets)
        self.ui.overlayComboBox.connect("currentIndexChanged(int)", self.onOverlayChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.referenceSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMetrics)
        self.ui.regionSegmentSelector.setMRMLScene(slicer.mrmlScene)
        self.populateModels()
        self.initializeParameterNode()
        self.updateRegionWidgets()

    def cleanup(self) -> None:
        self.logic.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[SegXAIParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.logic.running:
            return
        p = self._parameterNode
        ok = bool(p and p.inputVolume and self.ui.modelComboBox.currentText != LOAD_MODEL_ITEM)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Segment and explain" if ok else "Select an input volume and a model"

    # -- models and targets --
    def populateModels(self) -> None:
        from SegXAILib.models.store import bundled_models, default_model_name

        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for name in bundled_models():
            self.ui.modelComboBox.addItem(name)
        for name in self._modelPaths:
            self.ui.modelComboBox.addItem(name)
        self.ui.modelComboBox.addItem(LOAD_MODEL_ITEM)
        try:
            self.ui.modelComboBox.setCurrentText(default_model_name())
        except Exception:
            pass
        self.ui.modelComboBox.blockSignals(False)
        self.onModelChanged()

    def selectedModel(self) -> Optional[str]:
        text = self.ui.modelComboBox.currentText
        return None if text == LOAD_MODEL_ITEM else self._modelPaths.get(text, text)

    def onLoadModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder (card.json + weights)")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Failed to read the model card.", waitCursor=True):
            from SegXAILib.models.card import ModelCard

            card = ModelCard.load(Path(folder) / "card.json")
            self._modelPaths[card.name] = folder
            self.populateModels()
            self.ui.modelComboBox.setCurrentText(card.name)

    def onModelChanged(self, index=None) -> None:
        self.ui.targetClassComboBox.clear()
        model = self.selectedModel()
        if model is not None:
            try:
                names = self.logic.classNames(model)
            except Exception:
                names = []
            for name in names:
                self.ui.targetClassComboBox.addItem(name)
        self._checkCanApply()

    def updateRegionWidgets(self, index=None) -> None:
        region = self.ui.regionComboBox.currentText
        for widget, shown in ((self.ui.regionSegmentSelector, region == "segment"), (self.ui.regionSegmentSelectorLabel, region == "segment"),
                              (self.ui.regionPointSelector, region == "point"), (self.ui.regionPointSelectorLabel, region == "point"),
                              (self.ui.regionRadiusSpinBox, region == "point"), (self.ui.regionRadiusSpinBoxLabel, region == "point")):
            widget.visible = shown

    # -- run --
    def onApplyButton(self) -> None:
        if self.logic.running:
            self.logic.cancel()
            self.onFinished(cancelled=True)
            return
        with slicer.util.tryWithErrorDisplay("SegXAI could not start.", waitCursor=True):
            if not self.logic.setupPythonRequirements(askConfirmation=True):
                return
            p = self._parameterNode
            methods = [m for m in METHOD_FIELDS if getattr(p, m)]
            region = self.logic.regionText(p.region, p.inputVolume, self.ui.regionSegmentSelector.currentNode(),
                                           self.ui.regionSegmentSelector.currentSegmentID(), p.regionPoint, p.regionRadius)
            self.logic.start(p.inputVolume, self.selectedModel(), p.device, methods, self.ui.targetClassComboBox.currentText,
                             region, p.layer, p.igSteps, p.computeQuality)
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "starting…"
            self._timer.start()

    def onPoll(self) -> None:
        for kind, payload in self.logic.poll():
            if kind == "progress":
                stage, fraction = payload
                self.ui.statusLabel.text = stage
                self.ui.progressBar.value = int(round(100 * fraction))
            elif kind == "error":
                self.onFinished()
                slicer.util.errorDisplay(f"SegXAI failed: {payload}")
                return
            elif kind == "done":
                self.onFinished()
                with slicer.util.tryWithErrorDisplay("SegXAI could not show its results.", waitCursor=True):
                    self.logic.showResults(payload, self._parameterNode.inputVolume, self._parameterNode.opacity)
                    self.updateResults()
                return
            elif kind == "exit":
                self.onFinished()
                slicer.util.errorDisplay(f"SegXAI's background process ended unexpectedly: {payload}")
                return

    def onFinished(self, cancelled: bool = False) -> None:
        self._timer.stop()
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = "cancelled" if cancelled else ""
        self._checkCanApply()

    # -- results --
    def updateResults(self) -> None:
        self.ui.overlayComboBox.blockSignals(True)
        self.ui.overlayComboBox.clear()
        for node in self.logic.mapNodes(self._parameterNode.inputVolume):
            self.ui.overlayComboBox.addItem(node.GetName(), node.GetID())
        self.ui.overlayComboBox.blockSignals(False)
        if self.logic.scoresTable is not None:
            self.ui.scoresTableView.setMRMLTableNode(self.logic.scoresTable)
        self.updateMetrics()

    def updateMetrics(self, node=None) -> None:
        with slicer.util.tryWithErrorDisplay("Could not compare with the reference segmentation."):
            table = self.logic.updateMetrics(self._parameterNode.inputVolume, self._parameterNode.referenceSegmentation)
            self.ui.metricsTableView.setMRMLTableNode(table)

    def onOverlayChanged(self, index) -> None:
        node = slicer.mrmlScene.GetNodeByID(self.ui.overlayComboBox.itemData(index)) if index >= 0 else None
        if node is not None:
            from SegXAILib import scene

            scene.show_overlay(self._parameterNode.inputVolume, node, self._parameterNode.opacity)

    def onOpacityChanged(self, value) -> None:
        from SegXAILib import scene

        scene.set_overlay_opacity(value)


# ---- Logic --------------------------------------------------------------------------------------
class SegXAILogic(ScriptedLoadableModuleLogic):
    """Dependencies, the background process (PythonSlicer child, reader thread, kill on cancel), and loading
    its results through SegXAILib.scene. Usable without the widget (see SegXAITest)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process = None
        self._queue = queue.Queue()
        self._workDir = None
        self._job = None
        self.scoresTable = None

    def getParameterNode(self):
        return SegXAIParameterNode(super().getParameterNode())

    # -- dependencies --
    @staticmethod
    def missingRequirements() -> list:
        import importlib.util

        return [pip for module, pip in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]

    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """PyTorch through the PyTorch extension, the rest through pip (never numpy or SimpleITK); asks first."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("SegXAI needs the PyTorch extension: install 'PyTorch' from the Extensions Manager and restart Slicer")
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                        "SegXAI needs PyTorch. Install it now? This downloads about 1–3 GB and may take several minutes."):
                    return False
                if torchLogic.installTorch(askConfirmation=False) is None:
                    raise RuntimeError("PyTorch could not be installed; see the PyTorch Utils module")
        missing = self.missingRequirements()
        if missing:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    f"SegXAI needs these Python packages: {', '.join(missing)}. Install them now?"):
                return False
            slicer.util.pip_install(" ".join(missing) + " --no-deps")
        return True

    # -- settings → child options --
    @staticmethod
    def classNames(model: Optional[str]) -> list:
        from SegXAILib.models.card import ModelCard
        from SegXAILib.models.store import resolve_model_folder

        card = ModelCard.load(resolve_model_folder(model) / "card.json")
        return [c.name for c in card.foreground]

    @staticmethod
    def regionText(region, volumeNode, segmentationNode, segmentId, pointNode, radius) -> str:
        """The region as SegXAILib's region string; a segment is exported as a mask file on the input grid."""
        from SegXAILib.errors import SegXAIError

        if region == "point":
            if pointNode is None or pointNode.GetNumberOfControlPoints() < 1:
                raise SegXAIError("choose a markup point for the region")
            r, a, s = pointNode.GetNthControlPointPositionWorld(0)
            return f"point:{r:.3f},{a:.3f},{s:.3f}:{radius:g}"
        if region == "segment":
            if segmentationNode is None or not segmentId:
                raise SegXAIError("choose a segment for the region")
            from SegXAILib.volume import write_volume
            from SegXAILib import scene

            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            path = Path(tempfile.mkdtemp(prefix="segxai-region-")) / "region.nrrd"
            write_volume(scene.volume_from_node(volumeNode).like(mask.astype("uint8")), path, overwrite=True)
            return f"mask:{path}"
        return region or "predicted"

    # -- background process --
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @staticmethod
    def pythonSlicerExecutable() -> str:
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        path = os.path.join(os.path.dirname(sys.executable), name)
        return path if os.path.exists(path) else (shutil.which("PythonSlicer") or sys.executable)

    def start(self, volumeNode, model, device, methods, target, region, layer, steps, quality) -> None:
        """Write the input to a temp folder and start the child; progress comes through :meth:`poll`."""
        from SegXAILib import scene, slicer_run
        from SegXAILib.volume import write_volume

        if self.running:
            raise RuntimeError("SegXAI is already running")
        self.cleanupWorkDir()
        self._workDir = tempfile.mkdtemp(prefix="segxai-")
        inputPath = os.path.join(self._workDir, "input.nrrd")
        write_volume(scene.volume_from_node(volumeNode), inputPath, overwrite=True)
        options = slicer_run.options_from(inputPath, model, device, methods, target or None, region, layer or None,
                                          steps if "ig" in methods else None, quality)
        options["input_name"] = volumeNode.GetName()
        command = slicer_run.child_command(self.pythonSlicerExecutable(), options, os.path.join(self._workDir, "out"))
        self._queue = queue.Queue()
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         bufsize=1, universal_newlines=True)
        threading.Thread(target=self._readOutput, args=(self._process, self._queue), daemon=True).start()

    @staticmethod
    def _readOutput(process, lines) -> None:
        for line in process.stdout:
            lines.put(line)
        process.wait()
        lines.put(None)

    def poll(self) -> list:
        """Events since the last call: ('progress', (stage, fraction)), ('done', manifest), ('error', text), ('exit', code)."""
        from SegXAILib import slicer_run

        events = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                code = self._process.returncode if self._process else None
                if not any(k in ("done", "error") for k, _ in events) and code not in (0, None):
                    events.append(("exit", f"exit code {code}"))
                break
            kind, payload = slicer_run.parse_line(line)
            if kind == slicer_run.LOG:
                print(payload)
            else:
                events.append((kind, payload))
        return events

    def cancel(self) -> None:
        if self.running:
            self._process.kill()
            self._process.wait()
        self._process = None

    def cleanupWorkDir(self) -> None:
        if self._workDir and os.path.isdir(self._workDir):
            shutil.rmtree(self._workDir, ignore_errors=True)
        self._workDir = None

    def runBlocking(self, volumeNode, model=None, device="cpu", methods=("gradcam",), target=None, region="predicted",
                    timeoutSec: float = 1800) -> dict:
        """Start, wait and show the results (for tests and scripts); raises on error."""
        import time

        self.start(volumeNode, model, device, list(methods), target, region, "", 32, False)
        deadline = time.time() + timeoutSec
        while time.time() < deadline:
            for kind, payload in self.poll():
                if kind == "done":
                    return self.showResults(payload, volumeNode)
                if kind in ("error", "exit"):
                    raise RuntimeError(f"SegXAI failed: {payload}")
            slicer.app.processEvents()
            time.sleep(0.2)
        self.cancel()
        raise RuntimeError("SegXAI timed out")

    # -- results --
    def showResults(self, manifestPath: str, volumeNode, opacity: float = 0.4) -> dict:
        """Load the child's files and put them in the scene (replacing only SegXAI's earlier nodes)."""
        from SegXAILib import scene, slicer_run

        self._job = slicer_run.load_job(manifestPath)
        nodes = scene.show_results(volumeNode, self._job["labels"], self._job["classes"], self._job["maps"],
                                   self._job["provenance"], slicer.mrmlScene, opacity)
        rows = slicer_run.scores_rows(self._job["maps"])
        self.scoresTable = scene.table_node(rows, f"{volumeNode.GetName()} SegXAI scores", volumeNode) if rows else None
        self.cleanupWorkDir()
        return nodes

    @staticmethod
    def mapNodes(volumeNode) -> list:
        from SegXAILib import scene

        return scene.segxai_nodes(slicer.mrmlScene, volumeNode, role="map") if volumeNode else []

    def updateMetrics(self, volumeNode, referenceNode):
        """A table of Dice, IoU, HD95, volumes … per class against the reference segmentation (by name)."""
        from SegXAILib import scene

        if volumeNode is None or referenceNode is None or self._job is None:
            return None
        segmentation = referenceNode.GetSegmentation()
        masks = {}
        for k in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(k)
            masks[segmentation.GetSegment(segmentId).GetName()] = slicer.util.arrayFromSegmentBinaryLabelmap(referenceNode, segmentId, volumeNode)
        rows = scene.reference_metrics_rows(self._job["labels"], self._job["classes"], masks)
        return scene.table_node(rows, f"{volumeNode.GetName()} SegXAI metrics", volumeNode) if rows else None


# ---- Test ---------------------------------------------------------------------------------------
class SegXAITest(ScriptedLoadableModuleTest):
    """Runs the whole path on the bundled sample CT on the CPU and checks the nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegXAI_sample()

    def test_SegXAI_sample(self):
        from SegXAILib import scene
        from SegXAILib.models.store import resources_dir

        samples = sorted((resources_dir() / "Samples").glob("*.nii*")) + sorted((resources_dir() / "Samples").glob("*.nrrd"))
        if not samples:
            self.delayDisplay("No bundled sample CT in Resources/Samples; test skipped")
            return
        self.delayDisplay("Loading the sample CT")
        volumeNode = slicer.util.loadVolume(str(samples[0]))
        logic = SegXAILogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        self.delayDisplay("Segmenting and explaining on the CPU")
        nodes = logic.runBlocking(volumeNode, device="cpu", methods=("gradcam",))
        segmentation = nodes["segmentation"].GetSegmentation()
        liverId = segmentation.GetSegmentIdBySegmentName("liver")
        self.assertTrue(liverId)
        self.assertEqual(scene.segment_snomed_code(segmentation.GetSegment(liverId)), "10200004")
        self.assertEqual(len(nodes["maps"]), 1)
        mapNode = nodes["maps"][0]
        self.assertEqual(mapNode.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
        import numpy as np

        self.assertTrue(np.allclose(scene.ijk_to_ras(mapNode), scene.ijk_to_ras(volumeNode), atol=1e-6))
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), mapNode.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.4, places=3)
        self.assertEqual(mapNode.GetAttribute("SegXAI.Method"), "gradcam")
        # a second run replaces SegXAI's nodes only
        count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        logic.runBlocking(volumeNode, device="cpu", methods=("gradcam",))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), count)
        self.delayDisplay("Test passed")
