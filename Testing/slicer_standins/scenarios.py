"""Scenarios that open the SegXAI panel against Slicer 5.8.1's Python, run in a fresh subprocess.

``python -m slicer_standins.scenarios OUT.json`` (cwd ``Testing``) blocks torch and MONAI (as on a fresh Slicer),
installs the stand-ins, imports ``SegXAI/SegXAI.py`` and runs each scenario; every scenario records what it saw
(or its traceback) in OUT.json for ``Testing/test_slicer_module.py`` to assert on. ``... OUT.json installed``
runs the end-to-end scenario instead, with everything importable and slicer-core's module logics.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _prepare(fresh: bool = True):
    """fresh: torch and MONAI cannot be imported (a fresh Slicer); else everything installed, with module logics."""
    sys.path[:0] = [str(ROOT / "SegXAI"), str(ROOT), str(HERE.parent)]
    import slicer_standins

    if fresh:
        slicer_standins.block_imports("torch", "monai")
    slicer = slicer_standins.install(with_module_logics=not fresh)
    import SegXAI

    return slicer, SegXAI


class ModuleParent:
    """What Slicer hands a scripted module's constructor (qSlicerScriptedLoadableModule's Python face)."""

    def __init__(self, path):
        self.path = str(path)
        self.isEntered = True


def open_panel(slicer, SegXAI):
    import qt

    SegXAI.SegXAI(ModuleParent(ROOT / "SegXAI" / "SegXAI.py"))
    parent = slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.isEntered = True
    widget = SegXAI.SegXAIWidget(parent)
    widget.setup()
    widget.enter()
    OPENED.append(widget)
    return widget


#: panels opened by the current scenario (closed before the next one clears the scene)
OPENED = []


def scenario_connectors(slicer, SegXAI, out):
    """Slicer's own createGuiConnector for every SlicerParameterName in the .ui, on widgets the .ui describes."""
    import qt
    from slicer.parameterNodeWrapper import createGuiConnector

    ui = qt.QUiLoader().load(qt.QFile(str(ROOT / "SegXAI" / "Resources" / "UI" / "SegXAI.ui")))
    result = {}
    for widget in ui.findChildren(qt.QWidget):
        name = widget.property("SlicerParameterName")
        if not name:
            continue
        try:
            connector = createGuiConnector(widget, SegXAI.SegXAIParameterNode.dataType(name))
            result[name] = {"widget": type(widget).__name__, "connector": type(connector).__name__}
        except Exception as err:
            result[name] = {"widget": type(widget).__name__, "error": f"{type(err).__name__}: {err}"}
    out["connectors"] = result


def scenario_open_without_torch(slicer, SegXAI, out):
    """setup() on a fresh Slicer: torch and MONAI not importable; the panel opens, models listed, Apply reachable."""
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    widget = open_panel(slicer, SegXAI)
    ui = widget.ui
    out["torch_blocked"] = sys.modules.get("torch", "absent") is None
    out["models"] = [ui.modelComboBox.itemText(i) for i in range(ui.modelComboBox.count)]
    out["target_classes"] = [ui.targetClassComboBox.itemText(i) for i in range(ui.targetClassComboBox.count)]
    out["apply_enabled"] = bool(ui.applyButton.enabled)
    out["input_bound"] = widget._parameterNode.inputVolume is volume
    # device / region round trip through Slicer's real connector and serializer
    ui.deviceComboBox.setCurrentText("cpu")
    ui.regionComboBox.setCurrentText("point")
    out["device_param"] = widget._parameterNode.device
    out["region_param"] = widget._parameterNode.region
    out["point_widgets_visible"] = bool(ui.regionPointSelector.visible) and not ui.regionSegmentSelector.visible
    widget._parameterNode.device = "cuda"
    out["device_widget"] = ui.deviceComboBox.currentText
    # Apply on a fresh Slicer: the install prompt comes, nothing starts when the user says no
    prompts = []
    slicer.util.confirmOkCancelDisplay = lambda text, *a, **k: prompts.append(text) or False
    ui.applyButton.click()
    out["install_prompt"] = prompts
    out["busy_after_no"] = widget.logic.busy
    out["loaded_torch"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai") and sys.modules[m] is not None)
    out["widgets_with_parameter"] = sorted(n for n in vars(ui) if getattr(ui, n).property("SlicerParameterName"))


def choose_model_folder(widget, folder) -> tuple:
    """Pick "Load model…" and answer the chooser with ``folder``: (the list's text, the model passed on, targets)."""
    import qt

    ui = widget.ui
    qt.QFileDialog.next_directory = str(folder)
    ui.modelComboBox.setCurrentText("Load model…")
    targets = [ui.targetClassComboBox.itemText(i) for i in range(ui.targetClassComboBox.count)]
    return ui.modelComboBox.currentText, widget.selectedModel(), targets


def scenario_load_model_item(slicer, SegXAI, out, tmp):
    """Picking "Load model…" opens the folder chooser; a chosen folder is added and selected; cancel goes back."""
    import qt

    from SegXAILib.models.store import bundled_models, models_dir

    widget = open_panel(slicer, SegXAI)
    ui = widget.ui
    before = ui.modelComboBox.currentText
    qt.QFileDialog.next_directory = ""
    qt.QFileDialog.calls.clear()
    ui.modelComboBox.setCurrentText("Load model…")
    out["cancel_opened_chooser"] = len(qt.QFileDialog.calls)
    out["cancel_back_to"] = [before, ui.modelComboBox.currentText]
    card = json.loads((models_dir() / bundled_models()[0] / "card.json").read_text())
    card["name"] = "my-own-model"
    folder = Path(tmp) / "my-own-model-folder"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps(card))
    out["chosen_selected"], out["chosen_model"], out["targets_after_load"] = choose_model_folder(widget, folder)
    out["chosen_folder"] = str(folder)
    # an nnU-Net v2 trained-model folder: its classes come from dataset.json, without torch (not importable here)
    import nnunet_folder

    trained = Path(tmp) / "Dataset999_SegXAITest" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (trained / "fold_0").mkdir(parents=True)
    (trained / "plans.json").write_text(json.dumps(nnunet_folder.plans()))
    (trained / "dataset.json").write_text(json.dumps(nnunet_folder.dataset()))
    (trained / "fold_0" / "checkpoint_final.pth").write_bytes(b"")  # never read to list the classes
    out["nnunet_selected"], out["nnunet_model"], out["nnunet_targets"] = choose_model_folder(widget, trained)
    out["nnunet_folder"] = str(trained)
    out["torch_after_nnunet"] = sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None)


def scenario_results_go_to_processed_volume(slicer, SegXAI, out):
    """A job runs on CT A; the user selects CT B before it ends; results and metrics belong to A, reference = now."""
    a = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT A")
    b = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT B")
    ref1 = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference 1")
    ref2 = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference 2")
    widget = open_panel(slicer, SegXAI)
    ui, logic = widget.ui, widget.logic
    widget._parameterNode.inputVolume = a
    shown, metrics = [], []

    class FinishedJob:
        running = True

        def poll(self):
            self.running = False
            return [("line", "SEGXAI-DONE /tmp/job/manifest.json\n")]

        def release(self):
            self.running = False

        cancel = release

    def fake_show(manifest, volumeNode, *display_options):
        shown.append(volumeNode.GetName())
        logic.book.record(volumeNode.GetID(), {"provenance": {"model": "m", "device": "cpu"}, "maps": []})

    def fake_metrics(volumeNode, referenceNode):
        metrics.append((volumeNode.GetName() if volumeNode else None, referenceNode.GetName() if referenceNode else None,
                        bool(logic.book.job_for(volumeNode.GetID() if volumeNode else None))))
        return None

    logic.showResults = fake_show
    logic.updateMetrics = fake_metrics
    logic.book.started(a.GetID())  # what logic.start records
    logic._job = FinishedJob()
    widget._parameterNode.inputVolume = b  # the user moves on while the job runs
    widget.onPoll()
    out["results_on"] = shown
    ui.referenceSegmentationSelector.setCurrentNode(ref1)
    ui.referenceSegmentationSelector.setCurrentNode(ref2)
    out["metrics_calls"] = list(metrics)
    out["summary_on_b"] = ui.runSummaryLabel.text
    widget._parameterNode.inputVolume = a
    out["summary_on_a"] = ui.runSummaryLabel.text
    out["metrics_after_selecting_a"] = metrics[len(out["metrics_calls"]):]


def scenario_cancel_and_log(slicer, SegXAI, out):
    """Start a real background process that prints undecodable bytes; the log shows it; Cancel ends the tree."""
    from SegXAILib.process_tree import BackgroundJob

    widget = open_panel(slicer, SegXAI)
    ui, logic = widget.ui, widget.logic
    script = ("import sys, time; sys.stdout.buffer.write(b'caf\\xe9 \\xff\\n'); sys.stdout.flush(); "
              "print('SEGXAI-PROGRESS {\"stage\": \"sliding window\", \"fraction\": 0.5}', flush=True); time.sleep(60)")
    work = Path(logic.newWorkDir())  # what Apply makes: the job's folder, which holds the region mask too
    (work / "region.nrrd").write_bytes(b"mask")
    out["work_dir_name"] = work.name
    logic._job = BackgroundJob([[sys.executable, "-c", script]]).start()
    widget._showBusy("starting…")
    import time

    deadline = time.time() + 30
    while "sliding window" not in ui.statusLabel.text and time.time() < deadline:
        widget.onPoll()
        time.sleep(0.05)
    out["log"] = ui.logTextEdit.toPlainText()
    out["status"] = ui.statusLabel.text
    out["progress"] = ui.progressBar.value
    out["button_while_running"] = ui.applyButton.text
    process = logic._job.process
    ui.applyButton.click()  # Cancel
    out["returncode_after_cancel"] = process.poll()
    out["button_after_cancel"] = ui.applyButton.text
    out["busy_after_cancel"] = logic.busy
    out["work_dir_left"] = work.exists()


def scenario_sample_data(slicer, SegXAI, out):
    """At startupCompleted the module registers the bundled CT with the Sample Data module."""
    import types

    calls = []

    class SampleDataLogic:  # the signature of Slicer 5.8's SampleData.SampleDataLogic (Modules/Scripted/SampleData)
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileTypes=None, loadFiles=None, loadFileProperties={},
                                           checksums=None, loadFileType=None):
            calls.append({"category": category, "sampleName": sampleName, "uris": uris, "fileNames": fileNames,
                          "nodeNames": nodeNames, "thumbnailFileName": thumbnailFileName, "checksums": checksums,
                          "loadFileType": loadFileType})

    sys.modules["SampleData"] = types.SimpleNamespace(SampleDataLogic=SampleDataLogic)
    slicer.app.connections.clear()
    SegXAI.SegXAI(ModuleParent(ROOT / "SegXAI" / "SegXAI.py"))
    out["signals"] = [signal for signal, _ in slicer.app.connections]
    for signal, slot in slicer.app.connections:
        if signal == "startupCompleted()":
            slot()
    out["calls"] = calls


def scenario_pytorch_utils(slicer, SegXAI, out):
    """The PyTorch extension's own logic (``SlicerPyTorch/PyTorchUtils.py``) on the same fresh Slicer."""
    sys.path.insert(0, str(ROOT.parent / "shared" / "slicer-5.8.1" / "SlicerPyTorch"))
    import PyTorchUtils

    from SegXAILib import dependencies

    out["torch_installed"] = PyTorchUtils.PyTorchUtilsLogic.torchInstalled()
    out["their_args"] = PyTorchUtils.PyTorchUtilsLogic._getPipInstallArguments(
        torchVersionRequirement=f">={dependencies.MINIMUM_TORCH}")
    commands, _ = dependencies.plan("PythonSlicer", Path(sys.argv[1]).parent / "install-plan")
    out["our_torch_command"] = next((c for c in commands if "light_the_torch" in c), None)


def scenario_apply_end_to_end(slicer, SegXAI, out):
    """Everything installed: Apply on a small CT runs the real background child and shows its results."""
    import time

    import numpy as np

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "small CT")
    hu = np.full((24, 40, 40), -1000, np.int16)
    hu[4:20, 8:32, 8:32] = 60
    slicer.util.updateVolumeFromArray(volume, hu)
    volume.SetSpacing(3.0, 3.0, 3.0)
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other CT")
    widget = open_panel(slicer, SegXAI)
    ui, logic = widget.ui, widget.logic
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.device = "cpu"
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    widget._parameterNode.outputSegmentation = mine  # "Output segmentation": write the segments here
    prompts = []
    slicer.util.confirmOkCancelDisplay = lambda text, *a, **k: prompts.append(text) or False
    errors = []
    slicer.util.errorDisplay = lambda text, *a, **k: errors.append(text)
    ui.applyButton.click()
    out["prompts"] = prompts
    out["started"] = logic.busy
    work = logic._workDir
    widget._parameterNode.inputVolume = other  # the user looks at another volume meanwhile
    deadline = time.time() + 300
    while logic.busy and time.time() < deadline:
        widget.onPoll()
        time.sleep(0.1)
    widget.onPoll()
    out["errors"] = errors
    from SegXAILib import scene

    names = mine.GetSegmentation()
    out["segments_in_chosen_output"] = [names.GetNthSegment(k).GetName() for k in range(names.GetNumberOfSegments())]
    out["other_segmentations"] = [n.GetName() for n in scene.segxai_nodes(slicer.mrmlScene, volume, role="segmentation")
                                  if n is not mine]
    maps = scene.segxai_nodes(slicer.mrmlScene, volume, role="map")
    out["maps_on_processed"] = [n.GetAttribute("SegXAI.Method") for n in maps]
    out["nodes_on_other"] = [n.GetName() for n in scene.segxai_nodes(slicer.mrmlScene, other)]
    out["map_grid_matches"] = bool(maps) and maps[0].GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    out["work_dir_left"] = bool(work) and Path(work).exists()
    out["log_lines"] = len(ui.logTextEdit.toPlainText().splitlines())
    out["button"] = ui.applyButton.text
    widget._parameterNode.inputVolume = volume
    out["summary"] = ui.runSummaryLabel.text
    out["overlays"] = [ui.overlayComboBox.itemText(i) for i in range(ui.overlayComboBox.count)]
    # a reference segmentation chosen now: the metrics table compares it with this volume's own result
    labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "reference labels")
    reference_mask = np.zeros(hu.shape, np.uint8)
    reference_mask[4:20, 8:32, 8:32] = 1
    slicer.util.updateVolumeFromArray(labels, reference_mask)
    labels.SetSpacing(3.0, 3.0, 3.0)
    reference = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference")
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, reference)
    segmentation = reference.GetSegmentation()
    segmentation.GetSegment(segmentation.GetNthSegmentID(0)).SetName("liver")
    ui.referenceSegmentationSelector.setCurrentNode(reference)
    table = ui.metricsTableView.tableNode
    out["metrics_table"] = None if table is None else [
        [table.GetTable().GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())],
        [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())]]
    out["errors_after_metrics"] = errors[len(out["errors"]):]
    if table is not None:  # Dice by numpy on the masks Slicer exports, against the table's
        seg = mine
        liver_id = seg.GetSegmentation().GetSegmentIdBySegmentName("liver")
        predicted = slicer.util.arrayFromSegmentBinaryLabelmap(seg, liver_id, volume) > 0 if liver_id else np.zeros(hu.shape, bool)
        truth = reference_mask > 0
        out["dice_numpy"] = float(2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))
        columns = out["metrics_table"][0]
        out["dice_table"] = float(table.GetCellText(0, columns.index("dice")))


INSTALLED_SCENARIOS = [scenario_apply_end_to_end]

def scenario_background_install(slicer, SegXAI, out):
    """Apply with something missing and the user saying yes: the installation runs in the background (Apply
    returns at once, the button offers Cancel), and its end is reported in the panel."""
    import time

    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    widget = open_panel(slicer, SegXAI)
    ui, logic = widget.ui, widget.logic
    marker = Path(sys.argv[1]).parent / "install-finished"
    slow_install = [sys.executable, "-c", f"import time; print('Collecting monai', flush=True); time.sleep(1); open({str(marker)!r}, 'w')"]
    logic.installPlan = lambda: ([slow_install], "SegXAI needs the Python packages monai>=1.3. Install now?")
    slicer.util.confirmOkCancelDisplay = lambda text, *a, **k: True
    ui.applyButton.click()
    out["apply_returned_before_install_ended"] = not marker.exists()
    out["button_during_install"] = ui.applyButton.text
    out["status_during_install"] = ui.statusLabel.text
    deadline = time.time() + 60
    while logic.busy and time.time() < deadline:
        widget.onPoll()
        time.sleep(0.05)
    widget.onPoll()
    out["status_after_install"] = ui.statusLabel.text
    out["log"] = ui.logTextEdit.toPlainText()
    out["button_after_install"] = ui.applyButton.text


SCENARIOS = [scenario_background_install, scenario_pytorch_utils, scenario_sample_data, scenario_connectors, scenario_open_without_torch, scenario_load_model_item,
             scenario_results_go_to_processed_volume, scenario_cancel_and_log]


def main(path: str, mode: str = "fresh") -> int:
    import tempfile

    results = {}
    try:
        slicer, SegXAI = _prepare(fresh=mode == "fresh")
    except Exception:
        results["import"] = {"error": traceback.format_exc()}
        Path(path).write_text(json.dumps(results, indent=1))
        return 0
    results["import"] = {"module": SegXAI.__file__}
    with tempfile.TemporaryDirectory(prefix="segxai-standins-") as tmp:
        for scenario in SCENARIOS if mode == "fresh" else INSTALLED_SCENARIOS:
            out = {}
            if mode == "fresh":
                slicer.mrmlScene.Clear(0)
            try:
                if "tmp" in scenario.__code__.co_varnames[:scenario.__code__.co_argcount]:
                    scenario(slicer, SegXAI, out, tmp)
                else:
                    scenario(slicer, SegXAI, out)
            except Exception:
                out["error"] = traceback.format_exc()
            while OPENED:
                OPENED.pop().cleanup()
            results[scenario.__name__[len("scenario_"):]] = out
    Path(path).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
