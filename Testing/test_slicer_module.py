"""The SegXAI panel against Slicer 5.8.1's own Python (``../shared/slicer-5.8.1``): Slicer's real
``parameterNodeWrapper`` builds the GUI connectors, Slicer's real ``ScriptedLoadableModule`` runs ``setup()``,
slicer-core provides MRML; only ``qt``/``ctk`` are small stand-ins (``Testing/slicer_standins``).

Everything runs once, in one subprocess where torch and MONAI cannot be imported (a fresh Slicer), so the stand-ins
never touch this pytest process. Each test reads one scenario's record.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICER_581 = ROOT.parent / "shared" / "slicer-5.8.1" / "Base" / "Python" / "slicer"
UI = ROOT / "SegXAI" / "Resources" / "UI" / "SegXAI.ui"

pytestmark = pytest.mark.skipif(not SLICER_581.is_dir(), reason="Slicer 5.8.1's Python is not beside the checkout")


def run_scenarios(tmp_path_factory, mode: str) -> dict:
    pytest.importorskip("slicer")
    out = tmp_path_factory.mktemp("scenarios") / "scenarios.json"
    proc = subprocess.run([sys.executable, "-m", "slicer_standins.scenarios", str(out), mode], cwd=ROOT / "Testing",
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert "error" not in data["import"], data["import"]["error"]
    return data


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """The panel on a fresh Slicer: torch and MONAI cannot be imported."""
    return run_scenarios(tmp_path_factory, "fresh")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The panel with everything installed and slicer-core's module logics: a real run."""
    return run_scenarios(tmp_path_factory, "installed")


def scenario(record, name) -> dict:
    result = record[name]
    assert "error" not in result, result["error"]
    return result


def ui_parameter_names() -> dict:
    tree = ET.parse(UI)
    names = {}
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[prop.find("string").text] = widget.get("class")
    return names


def test_module_imports_against_slicer_581(record):
    assert Path(record["import"]["module"]).resolve() == (ROOT / "SegXAI" / "SegXAI.py").resolve()


def test_every_ui_parameter_gets_slicers_connector(record):
    """Finding 2: Slicer's createGuiConnector raises for a str bound to a QComboBox without Choice."""
    connectors = scenario(record, "connectors")["connectors"]
    assert set(connectors) == set(ui_parameter_names())
    failed = {name: c["error"] for name, c in connectors.items() if "error" in c}
    assert not failed, failed
    assert connectors["device"]["connector"] == connectors["region"]["connector"] == "QComboBoxToStringableConnector"


def test_panel_opens_without_torch_and_apply_reaches_install_prompt(record):
    """Finding 1: setup() → populateModels() on a Slicer where torch and MONAI are not installed."""
    seen = scenario(record, "open_without_torch")
    assert seen["torch_blocked"] and seen["loaded_torch"] == []
    assert {"segxai-resunet-3mm", "segxai-transunet-3mm"} <= set(seen["models"]) and seen["models"][-1] == "Load model…"
    assert "liver" in seen["target_classes"]
    assert seen["input_bound"] and seen["apply_enabled"]
    assert len(seen["install_prompt"]) == 1 and "PyTorch" in seen["install_prompt"][0]
    assert not seen["busy_after_no"]


def test_target_list_offers_only_classes_the_card_learned(record):
    """The bundled cards measure five organs at 0 mL on every patient: they are not offered as targets."""
    display = pytest.importorskip("SegXAILib.display")
    from SegXAILib.models.card import ModelCard
    from SegXAILib.models.store import default_model_name, resolve_model_folder

    seen = scenario(record, "open_without_torch")
    card = ModelCard.load(resolve_model_folder(default_model_name()) / "card.json")
    learned = [c.name for c in display.shown_classes(card.classes, card.metrics)]
    assert seen["target_classes"] == learned
    assert not set(display.hidden_classes(card.classes, card.metrics)) & set(seen["target_classes"])


def test_sample_ct_is_registered_in_sample_data(record):
    import urllib.request

    from SegXAILib import module_logic

    seen = scenario(record, "sample_data")
    assert "startupCompleted()" in seen["signals"]
    (call,) = seen["calls"]
    with urllib.request.urlopen(call["uris"]) as response:
        assert response.read() == module_logic.sample_ct().read_bytes()
    assert call["category"] == "SegXAI" and call["fileNames"].endswith(".nii.gz") and call["checksums"].startswith("SHA256:")
    assert Path(call["thumbnailFileName"]).resolve() == (ROOT / "SegXAI" / "Resources" / "Icons" / "SegXAI.png").resolve()


def test_combo_box_parameters_round_trip_through_slicers_connector(record):
    seen = scenario(record, "open_without_torch")
    assert (seen["device_param"], seen["region_param"], seen["device_widget"]) == ("cpu", "point", "cuda")
    assert seen["point_widgets_visible"]
    assert set(seen["widgets_with_parameter"]) >= {"outputSegmentationSelector", "deviceComboBox", "regionComboBox"}


def test_load_model_item_opens_folder_chooser(record):
    """Finding 10: picking "Load model…" in the list opens the chooser; cancel returns to the previous model."""
    seen = scenario(record, "load_model_item")
    assert seen["cancel_opened_chooser"] == 1
    assert seen["cancel_back_to"][0] == seen["cancel_back_to"][1] != "Load model…"
    assert seen["chosen_selected"] == "my-own-model"
    assert seen["chosen_model"] == seen["chosen_folder"]
    assert "liver" in seen["targets_after_load"]
    # issue 16: an nnU-Net v2 trained-model folder loads too, its classes listed from dataset.json without torch
    assert seen["nnunet_selected"] == "Dataset999_SegXAITest/nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert seen["nnunet_model"] == seen["nnunet_folder"]
    assert seen["nnunet_targets"] == ["liver", "spleen", "kidney_right"]
    assert seen["torch_after_nnunet"] == []


def test_results_attach_to_processed_volume_and_metrics_use_reference_now(record):
    """Finding 7: the job ran on CT A while CT B got selected; the reference is the one just chosen."""
    seen = scenario(record, "results_go_to_processed_volume")
    assert seen["results_on"] == ["CT A"]
    with_reference = [call for call in seen["metrics_calls"] if call[1]]
    assert [call[:2] for call in with_reference] == [["CT B", "reference 1"], ["CT B", "reference 2"]]
    assert not any(call[2] for call in seen["metrics_calls"]), "CT B has no job of its own; none may be reused"
    assert seen["summary_on_b"] == "" and "model m on cpu" in seen["summary_on_a"]
    assert seen["metrics_after_selecting_a"] == [["CT A", "reference 2", True]]


def test_log_box_shows_undecodable_output_and_cancel_ends_the_run(record):
    """Finding 10 (reader thread survives bytes that are not UTF-8) and the log box beside the progress bar."""
    seen = scenario(record, "cancel_and_log")
    assert seen["log"].startswith("caf\ufffd")
    assert (seen["status"], seen["progress"], seen["button_while_running"]) == ("sliding window", 50, "Cancel")
    assert seen["returncode_after_cancel"] is not None and seen["button_after_cancel"] == "Apply"
    assert not seen["busy_after_cancel"]


def test_job_folder_with_region_mask_is_deleted_after_the_run(record):
    """Finding 10: the region mask lives in the job's folder (no stray segxai-region-* folders), deleted with it."""
    seen = scenario(record, "cancel_and_log")
    assert seen["work_dir_name"].startswith("segxai-") and seen["work_dir_left"] is False
    source = (ROOT / "SegXAI" / "SegXAI.py").read_text()
    assert "segxai-region-" not in source and 'Path(workDir) / "region.nrrd"' in source


def test_torch_is_installed_the_way_the_pytorch_extension_does(record):
    """Finding 10: PyTorchUtils says torch is missing here and installs it with light-the-torch; so do we, with
    the minimum version (no torchvision: SegXAI does not use it)."""
    seen = scenario(record, "pytorch_utils")
    assert seen["torch_installed"] is False
    ours = seen["our_torch_command"]
    assert ours is not None and ours[1:3] == ["-m", "light_the_torch"]
    theirs = [arg for arg in seen["their_args"] if not arg.startswith("torchvision")]
    assert ours[3:] == theirs


def test_apply_runs_the_background_child_and_shows_results_on_the_processed_volume(installed):
    """End to end: Apply → PythonSlicer-style child (the real segmentation and Grad-CAM) → results in the scene,
    on the volume processed although another one got selected meanwhile; the job's folder is gone."""
    seen = scenario(installed, "apply_end_to_end")
    assert seen["prompts"] == [] and seen["started"] and seen["errors"] == []
    assert seen["maps_on_processed"] == ["gradcam"]
    assert seen["nodes_on_other"] == [] and seen["map_grid_matches"]
    assert seen["work_dir_left"] is False and seen["button"] == "Apply"
    assert seen["summary"].startswith("Grad-CAM explains") and len(seen["overlays"]) == 1


def test_metrics_table_compares_this_volumes_result_with_the_reference_chosen_now(installed):
    """Finding 7, end to end: the Dice in the panel's table equals numpy's Dice of the masks Slicer exports."""
    seen = scenario(installed, "apply_end_to_end")
    assert seen["errors_after_metrics"] == []
    columns, rows = seen["metrics_table"]
    assert "dice" in columns and rows == ["liver"]
    assert seen["dice_table"] == pytest.approx(seen["dice_numpy"], abs=1e-3)


def test_output_segmentation_selector_receives_the_segments(installed):
    """The segmentation chosen under "Output segmentation" is where the run writes its segments (no second one)."""
    seen = scenario(installed, "apply_end_to_end")
    assert "liver" in seen["segments_in_chosen_output"] and seen["other_segmentations"] == []


def test_dependency_installation_runs_in_the_background(record):
    """Apply starts the installation and returns at once (the GUI keeps running); its output and end show up."""
    seen = scenario(record, "background_install")
    assert seen["apply_returned_before_install_ended"]
    assert seen["button_during_install"] == "Cancel" and "installing" in seen["status_during_install"]
    assert seen["log"] == "Collecting monai"
    assert "installed" in seen["status_after_install"] and seen["button_after_install"] == "Apply"
