"""SegXAI 3D Slicer module: segment a CT and explain the segmentation, results shown in the scene.

A thin front door: widgets, parameters and the background process live here; every decision (segmentation,
explanation, which nodes, colours, windows, metrics, what to install, which volume a result belongs to, plain
names) is made in SegXAILib (``scene``, ``slicer_run``, ``module_logic``, ``dependencies``, ``score_labels``).
Nothing here imports torch or MONAI: the panel must open on a fresh Slicer before they are installed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SegXAILib.module_logic import DEVICE_CHOICES, LOAD_MODEL_ITEM, REGION_CHOICES

#: lines kept in the log box
LOG_LINES = 500


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
            "Segment a CT volume with a bundled 3D U-Net or TransUNet and explain the segmentation (Grad-CAM, "
            "HiResCAM, Grad-CAM++, integrated gradients, LRP). Maps are shown over the CT on its exact grid. "
            "Research and education only; not for clinical use."
        )
        self.parent.acknowledgementText = (
            "Sample CT and reference labels: TotalSegmentator test data (Wasserthal et al., Radiology: AI 2023), CC BY 4.0."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The bundled CT in the Sample Data module (category SegXAI)."""
    import SampleData

    from SegXAILib import module_logic

    thumbnail = Path(__file__).resolve().parent / "Resources" / "Icons" / "SegXAI.png"
    source = module_logic.sample_data_source(thumbnail)
    register = SampleData.SampleDataLogic.registerCustomSampleDataSource
    register(**module_logic.accepted(register, **source))


# ---- Parameters ---------------------------------------------------------------------------------
@parameterNodeWrapper
class SegXAIParameterNode:
    """The module's settings, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    gradcam: bool = True
    hirescam: bool = False
    gradcampp: bool = False
    ig: bool = False
    lrp: bool = False
    region: Annotated[str, Choice(list(REGION_CHOICES))] = "predicted"
    regionPoint: vtkMRMLMarkupsFiducialNode
    regionRadius: Annotated[float, WithinRange(1.0, 100.0)] = 10.0
    layer: str = ""
    igSteps: Annotated[int, WithinRange(2, 256)] = 32
    computeQuality: bool = False
    referenceSegmentation: vtkMRMLSegmentationNode
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    show3D: bool = False
    commonScale: bool = True


METHOD_FIELDS = ("gradcam", "hirescam", "gradcampp", "ig", "lrp")


# ---- Widget -------------------------------------------------------------------------------------
class SegXAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: collects settings, starts/cancels the background run, shows progress, log and results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelPaths = {}
        self._lastModel = None
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
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3D)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
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
        if self.logic.busy:
            return
        p = self._parameterNode
        ok = bool(p and p.inputVolume and self.selectedModel() is not None)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Segment and explain" if ok else "Select an input volume and a model"

    # -- models and targets --
    def populateModels(self, select: Optional[str] = None) -> None:
        from SegXAILib import module_logic
        from SegXAILib.models.store import bundled_models, default_model_name

        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for name in module_logic.model_items(bundled_models(), self._modelPaths):
            self.ui.modelComboBox.addItem(name)
        try:
            self.ui.modelComboBox.setCurrentText(select or default_model_name())
        except Exception:  # no bundled model: the list holds only "Load model…"
            pass
        self.ui.modelComboBox.blockSignals(False)
        self.onModelChanged()

    def selectedModel(self) -> Optional[str]:
        from SegXAILib import module_logic

        return module_logic.model_choice(self.ui.modelComboBox.currentText, self._modelPaths)

    def onLoadModel(self) -> None:
        """Choose a model folder (a SegXAI card + weights, or an nnU-Net v2 trained-model folder) and add it to the
        list; cancelled: back to the last model."""
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Model folder (card.json + weights, or an nnU-Net v2 trained model)")
        if not folder:
            self.populateModels(select=self._lastModel)
            return
        with slicer.util.tryWithErrorDisplay("Failed to read the model.", waitCursor=True):
            from SegXAILib.models.store import read_card

            card = read_card(folder)
            self._modelPaths[card.name] = folder
            self.populateModels(select=card.name)

    def onModelChanged(self, index=None) -> None:
        if self.ui.modelComboBox.currentText == LOAD_MODEL_ITEM and self.ui.modelComboBox.count > 1:  # PythonQt: count is a property
            qt.QTimer.singleShot(0, self.onLoadModel)  # after the combo box has closed
            return
        if self.ui.modelComboBox.currentText != LOAD_MODEL_ITEM:
            self._lastModel = self.ui.modelComboBox.currentText
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
        if self.logic.busy:
            self.logic.cancel()
            self.onFinished("cancelled")
            return
        with slicer.util.tryWithErrorDisplay("SegXAI could not start.", waitCursor=True):
            commands, message = self.logic.installPlan()
            if commands:
                if not slicer.util.confirmOkCancelDisplay(message):
                    return
                self.logic.startInstall(commands)
                self._showBusy("installing Python packages… (the panel stays usable)")
                return
            p = self._parameterNode
            methods = [m for m in METHOD_FIELDS if getattr(p, m)]
            workDir = self.logic.newWorkDir()
            region = self.logic.regionText(p.region, p.inputVolume, self.ui.regionSegmentSelector.currentNode(),
                                           self.ui.regionSegmentSelector.currentSegmentID(), p.regionPoint,
                                           p.regionRadius, workDir)
            self.logic.start(p.inputVolume, self.selectedModel(), p.device, methods, self.ui.targetClassComboBox.currentText,
                             region, p.layer, p.igSteps, p.computeQuality)
            self._showBusy("starting…")

    def _showBusy(self, text: str) -> None:
        self.ui.applyButton.text = "Cancel"
        self.ui.applyButton.enabled = True
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = text
        self._timer.start()

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text.rstrip("\r\n"))

    def onPoll(self) -> None:
        for kind, payload in self.logic.poll():
            if kind == "log":
                self._log(payload)
            elif kind == "progress":
                stage, fraction = payload
                self.ui.statusLabel.text = stage
                self.ui.progressBar.value = int(round(100 * fraction))
            elif kind == "installed":
                self.onFinished("Python packages installed; press Apply to run")
                return
            elif kind == "error":
                self.onFinished("failed")
                slicer.util.errorDisplay(f"SegXAI failed: {payload}")
                return
            elif kind == "done":
                volumeNode = self.logic.processedVolume()
                self.onFinished("")
                with slicer.util.tryWithErrorDisplay("SegXAI could not show its results.", waitCursor=True):
                    p = self._parameterNode
                    self.logic.showResults(payload, volumeNode, p.opacity, p.outputSegmentation, p.show3D, p.commonScale)
                    self.updateResults()  # the selected volume's results (the job's volume may not be selected now)
                return
            elif kind == "exit":
                self.onFinished("failed")
                slicer.util.errorDisplay(f"SegXAI's background process ended unexpectedly: {payload}")
                return

    def onFinished(self, status: str = "") -> None:
        self._timer.stop()
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = status
        self._checkCanApply()

    # -- results --
    def onInputChanged(self, node=None) -> None:
        self.updateResults(node)

    def updateResults(self, volumeNode=None) -> None:
        """Overlays, scores, plain-words summary and metrics of the job that processed ``volumeNode``."""
        volumeNode = volumeNode or self.ui.inputVolumeSelector.currentNode()
        self.ui.overlayComboBox.blockSignals(True)
        self.ui.overlayComboBox.clear()
        for node in self.logic.mapNodes(volumeNode):
            self.ui.overlayComboBox.addItem(node.GetName(), node.GetID())
        self.ui.overlayComboBox.blockSignals(False)
        self.ui.runSummaryLabel.text = self.logic.summary(volumeNode)
        table, legend = self.logic.scoresTableFor(volumeNode)
        self.ui.scoresTableView.setMRMLTableNode(table)
        self.ui.scoresTableView.toolTip = "\n".join(f"{name}: {good}" for name, good in legend)
        self.updateMetrics(self.ui.referenceSegmentationSelector.currentNode(), volumeNode)

    def updateMetrics(self, referenceNode=None, volumeNode=None) -> None:
        """Metrics against the reference chosen now (the signal's node: the parameter node may not know it yet)."""
        volumeNode = volumeNode or self.ui.inputVolumeSelector.currentNode()
        with slicer.util.tryWithErrorDisplay("Could not compare with the reference segmentation."):
            table = self.logic.updateMetrics(volumeNode, referenceNode)
            self.ui.metricsTableView.setMRMLTableNode(table)

    def onOverlayChanged(self, index) -> None:
        node = slicer.mrmlScene.GetNodeByID(self.ui.overlayComboBox.itemData(index)) if index >= 0 else None
        if node is not None:
            from SegXAILib import scene

            scene.show_overlay(self.ui.inputVolumeSelector.currentNode(), node, self._parameterNode.opacity)

    def onOpacityChanged(self, value) -> None:
        from SegXAILib import scene

        scene.set_overlay_opacity(value)

    def onShow3D(self, visible) -> None:
        """Closed surfaces of the selected volume's SegXAI segmentation in the 3D views, or not."""
        from SegXAILib import scene

        show = getattr(scene, "show_segmentation_3d", None)
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if show is None or volumeNode is None:
            return
        for node in scene.segxai_nodes(slicer.mrmlScene, volumeNode, role="segmentation"):
            show(node, bool(visible))


# ---- Logic --------------------------------------------------------------------------------------
class SegXAILogic(ScriptedLoadableModuleLogic):
    """Dependencies, the background process (PythonSlicer child; Cancel kills its whole tree), and loading its
    results through SegXAILib.scene onto the volume that was processed. Usable without the widget (SegXAITest)."""

    def __init__(self) -> None:
        from SegXAILib.module_logic import JobBook

        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None  # the running BackgroundJob (a run or an installation)
        self._installing = False
        self._workDir = None
        self.book = JobBook()
        self.scoresTables = {}

    def getParameterNode(self):
        return SegXAIParameterNode(super().getParameterNode())

    # -- dependencies --
    def installPlan(self) -> tuple:
        """(commands, message) that install what is missing; no commands when all is there."""
        from SegXAILib import dependencies, process_tree

        return dependencies.plan(process_tree.python_executable(), Path(tempfile.gettempdir()) / "segxai-install")

    def startInstall(self, commands: list) -> None:
        from SegXAILib.process_tree import BackgroundJob

        self._installing = True
        from SegXAILib.process_tree import child_environment

        self._job = BackgroundJob(commands, env=child_environment()).start()

    def setupPythonRequirements(self) -> None:
        """Install what is missing and wait (for SegXAITest and scripts; the panel installs in the background)."""
        import time

        commands, _ = self.installPlan()
        if not commands:
            return
        self.startInstall(commands)
        while self.busy:
            for kind, payload in self.poll():
                if kind in ("error", "exit"):
                    raise RuntimeError(f"SegXAI could not install its Python packages: {payload}")
            slicer.app.processEvents()
            time.sleep(0.2)

    # -- settings → child options --
    @staticmethod
    def classNames(model: Optional[str]) -> list:
        """Target classes of ``model``: the ones its card shows it learned."""
        from SegXAILib import module_logic
        from SegXAILib.models.store import read_card

        return module_logic.target_classes(read_card(model))

    @staticmethod
    def regionText(region, volumeNode, segmentationNode, segmentId, pointNode, radius, workDir) -> str:
        """The region as SegXAILib's region string; a segment is exported as a mask file into the job's folder."""
        from SegXAILib.errors import SegXAIError

        if region == "point":
            if pointNode is None or pointNode.GetNumberOfControlPoints() < 1:
                raise SegXAIError("choose a markup point for the region")
            r, a, s = pointNode.GetNthControlPointPositionWorld(0)
            return f"point:{r:.3f},{a:.3f},{s:.3f}:{radius:g}"
        if region == "segment":
            if segmentationNode is None or not segmentId:
                raise SegXAIError("choose a segment for the region")
            from SegXAILib import scene
            from SegXAILib.volume import write_volume

            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            path = Path(workDir) / "region.nrrd"
            write_volume(scene.volume_from_node(volumeNode).like(mask.astype("uint8")), path, overwrite=True)
            return f"mask:{path}"
        return region or "predicted"

    # -- background process --
    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.running

    running = busy

    def newWorkDir(self) -> str:
        """A fresh temporary folder for the next job (input, region mask, outputs); removed after the job."""
        self.cleanupWorkDir()
        self._workDir = tempfile.mkdtemp(prefix="segxai-")
        return self._workDir

    def start(self, volumeNode, model, device, methods, target, region, layer, steps, quality) -> None:
        """Write the input into the job's folder and start the child; progress comes through :meth:`poll`."""
        from SegXAILib import process_tree, scene, slicer_run
        from SegXAILib.process_tree import BackgroundJob
        from SegXAILib.volume import write_volume

        if self.busy:
            raise RuntimeError("SegXAI is already running")
        workDir = self._workDir or self.newWorkDir()
        inputPath = os.path.join(workDir, "input.nrrd")
        write_volume(scene.volume_from_node(volumeNode), inputPath, overwrite=True)
        options = slicer_run.options_from(inputPath, model, device, methods, target or None, region, layer or None,
                                          steps if "ig" in methods else None, quality)
        options["input_name"] = volumeNode.GetName()
        command = slicer_run.child_command(process_tree.python_executable(), options, os.path.join(workDir, "out"))
        self.book.started(volumeNode.GetID())
        self._installing = False
        self._job = BackgroundJob([command], env=process_tree.child_environment()).start()

    def poll(self) -> list:
        """Events since the last call: ('log', line), ('progress', (stage, fraction)), ('done', manifest),
        ('error', text), ('exit', text), ('installed', None)."""
        from SegXAILib import slicer_run

        if self._job is None:
            return []
        events = []
        for kind, payload in self._job.poll():
            if kind == "line":
                parsed = slicer_run.parse_line(payload)
                events.append(parsed if parsed[0] != slicer_run.LOG else ("log", parsed[1]))
            elif kind == "finished" and self._installing:
                events.append(("installed", None))
            elif kind == "failed" and not any(k in ("done", "error") for k, _ in events):
                argv, code = payload
                events.append(("exit", f"{os.path.basename(str(argv[0]))} {' '.join(map(str, argv[1:3]))} … exit code {code}"))
        if any(k in ("done", "error") for k, _ in events):
            self._job.release()  # its last line came; the child exits by itself
        if any(k in ("error", "exit") for k, _ in events):
            self.book.finished()
            self.cleanupWorkDir()
        return events

    def processedVolume(self):
        """The volume the finished job processed (whatever is selected now)."""
        nodeId = self.book.finished()
        node = slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None
        if node is None:
            from SegXAILib.errors import SegXAIError

            raise SegXAIError("the volume SegXAI processed was removed from the scene; its results are discarded")
        return node

    def cancel(self) -> None:
        """Stop the run or installation with every process it started, and delete the job's folder."""
        if self._job is not None:
            self._job.cancel()
        self._job = None
        self.book.finished()
        self.cleanupWorkDir()

    def cleanupWorkDir(self) -> None:
        if self._workDir and os.path.isdir(self._workDir):
            shutil.rmtree(self._workDir, ignore_errors=True)
        self._workDir = None

    def runBlocking(self, volumeNode, model=None, device="cpu", methods=("gradcam",), target=None, region="predicted") -> dict:
        """Start, wait and show the results (for tests and scripts); raises on error."""
        import time

        self.newWorkDir()
        self.start(volumeNode, model, device, list(methods), target, region, "", 32, False)
        while True:
            for kind, payload in self.poll():
                if kind == "done":
                    return self.showResults(payload, self.processedVolume())
                if kind in ("error", "exit"):
                    raise RuntimeError(f"SegXAI failed: {payload}")
            slicer.app.processEvents()
            time.sleep(0.2)

    # -- results --
    def showResults(self, manifestPath: str, volumeNode, opacity: float = 0.4, outputSegmentation=None,
                    show3D: bool = False, commonScale: bool = True) -> dict:
        """Load the child's files and put them in the scene on ``volumeNode`` (the processed volume)."""
        from SegXAILib import module_logic, scene, score_labels, slicer_run

        try:
            job = slicer_run.load_job(manifestPath)
            card = module_logic.card_of(job["manifest"])
            extra = module_logic.show_options(scene.show_results, outputSegmentation, show3D, commonScale,
                                              card.metrics if card else None)
            nodes = scene.show_results(volumeNode, job["labels"], job["classes"], job["maps"], job["provenance"],
                                       slicer.mrmlScene, opacity, **extra)
            self.book.record(volumeNode.GetID(), job)
            rows = score_labels.scores_rows(job["maps"])
            table = scene.table_node(rows, f"{volumeNode.GetName()} SegXAI scores", volumeNode) if rows else None
            self.scoresTables[volumeNode.GetID()] = (table, score_labels.legend_rows(rows))
        finally:
            self.cleanupWorkDir()
        return nodes

    def scoresTableFor(self, volumeNode) -> tuple:
        return self.scoresTables.get(volumeNode.GetID(), (None, [])) if volumeNode else (None, [])

    def summary(self, volumeNode) -> str:
        """The last run on ``volumeNode`` in plain words ("" when there was none)."""
        from SegXAILib import module_logic

        job = self.book.job_for(volumeNode.GetID() if volumeNode else None)
        return module_logic.describe_run(job["provenance"], job["maps"]) if job else ""

    @staticmethod
    def mapNodes(volumeNode) -> list:
        from SegXAILib import scene

        return scene.segxai_nodes(slicer.mrmlScene, volumeNode, role="map") if volumeNode else []

    def updateMetrics(self, volumeNode, referenceNode):
        """A table of Dice, IoU, HD95, volumes … per class of ``volumeNode``'s own job against ``referenceNode``."""
        from SegXAILib import scene

        job = self.book.job_for(volumeNode.GetID() if volumeNode else None)
        if job is None or referenceNode is None:
            return None
        segmentation = referenceNode.GetSegmentation()
        masks = {}
        for k in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(k)
            masks[segmentation.GetSegment(segmentId).GetName()] = slicer.util.arrayFromSegmentBinaryLabelmap(referenceNode, segmentId, volumeNode)
        rows = scene.reference_metrics_rows(job["labels"], job["classes"], masks)
        return scene.table_node(rows, f"{volumeNode.GetName()} SegXAI metrics", volumeNode) if rows else None


# ---- Test ---------------------------------------------------------------------------------------
class SegXAITest(ScriptedLoadableModuleTest):
    """Runs the whole path on the bundled sample CT on the CPU and checks the nodes; fails (never skips) when the
    installation lacks the sample or the models."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegXAI_sample()

    def test_SegXAI_sample(self):
        from SegXAILib import module_logic, scene
        from SegXAILib.models.store import bundled_models

        self.assertTrue(bundled_models(), "no bundled model: Resources/Models is missing from the installation")
        sample = module_logic.sample_ct()  # raises when the installation has no sample CT
        self.delayDisplay("Loading the sample CT")
        volumeNode = slicer.util.loadVolume(str(sample))
        logic = SegXAILogic()
        logic.setupPythonRequirements()
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
        self.assertEqual(mapNode.GetAttribute("SegXAI.Method"), "gradcam")
        self.assertTrue(logic.summary(volumeNode))
        # a second run replaces SegXAI's nodes only
        count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        logic.runBlocking(volumeNode, device="cpu", methods=("gradcam",))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), count)
        self.delayDisplay("Test passed")
