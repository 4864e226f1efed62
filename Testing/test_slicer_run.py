"""The Slicer module's background run: progress line protocol, options, map normalisation, and a real child
process that segments a CT and leaves files the parent can load."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SegXAILib import slicer_run
from SegXAILib.errors import SegXAIError
from SegXAILib.volume import Volume

CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz"
CHECKPOINT = Path("/tmp/train/segxai-resunet-3mm/checkpoint")


def a_model(tmp_path) -> str:
    """A bundled model name, else a copy of the training checkpoint; skip when neither exists."""
    from SegXAILib.models.store import bundled_models

    if bundled_models():
        return bundled_models()[0]
    import os

    if os.environ.get("SEGXAI_TEST_MODEL"):
        return os.environ["SEGXAI_TEST_MODEL"]
    if (CHECKPOINT / "card.json").exists():
        return str(shutil.copytree(CHECKPOINT, tmp_path / "model"))
    pytest.skip("no bundled model and no checkpoint to test with")


def test_progress_lines_round_trip():
    kind, (stage, fraction) = slicer_run.parse_line(slicer_run.progress_line("sliding window", 0.25) + "\n")
    assert (kind, stage, fraction) == ("progress", "sliding window", 0.25)
    assert slicer_run.parse_line("SEGXAI-DONE /tmp/x/manifest.json") == ("done", "/tmp/x/manifest.json")
    assert slicer_run.parse_line("SEGXAI-ERROR no such file") == ("error", "no such file")
    assert slicer_run.parse_line("SEGXAI-PROGRESS {broken")[0] == "log"
    assert slicer_run.parse_line("some warning") == ("log", "some warning")
    assert slicer_run.parse_line(slicer_run.progress_line("x", 3.0))[1][1] == 1.0


def test_options_and_child_command():
    options = slicer_run.options_from("ct.nii.gz", methods=["GradCAM", " ig", ""], steps="16")
    assert options["methods"] == ["gradcam", "ig"] and options["steps"] == 16 and options["region"] == "predicted"
    with pytest.raises(SegXAIError, match="unknown method"):
        slicer_run.options_from("ct.nii.gz", methods=["shap"])
    argv = slicer_run.child_command("/opt/Slicer/bin/PythonSlicer", options, "/tmp/out")
    assert argv[0] == "/opt/Slicer/bin/PythonSlicer" and argv[1] == "-c" and "--options" in argv and argv[-1] == "/tmp/out"


def test_normalise_maps_accepts_tuples_dicts_and_objects():
    v = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))

    class Explanation:
        method, volume, metadata = "lrp", v, {"layer": None}
        scores = {"energy_in_target": 0.7}

    maps = slicer_run.normalise_maps([("gradcam", v, {"layer": "a"}, False), {"name": "ig", "map": v}, Explanation()])
    assert [(m[0], m[3]) for m in maps] == [("gradcam", False), ("ig", True), ("lrp", True)]
    assert maps[2][2]["scores"]["energy_in_target"] == 0.7
    rows = slicer_run.scores_rows(maps)
    assert rows[2]["energy_in_target"] == 0.7 and rows[0]["layer"] == "a"
    with pytest.raises(TypeError):
        slicer_run.normalise_maps([("x", np.zeros(3), {}, False)])


def test_child_reports_error_as_one_line(tmp_path):
    options = slicer_run.options_from(tmp_path / "missing.nii.gz")
    out = subprocess.run(slicer_run.child_command(sys.executable, options, tmp_path / "job"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    kinds = [slicer_run.parse_line(line) for line in out.stdout.splitlines()]
    assert kinds[-1][0] == "error" and "no such file" in kinds[-1][1]


@pytest.mark.skipif(not CT.exists(), reason="shared CT not present")
def test_child_process_segments_and_parent_loads(tmp_path):
    options = slicer_run.options_from(CT, model=a_model(tmp_path), device="cpu")
    proc = subprocess.Popen(slicer_run.child_command(sys.executable, options, tmp_path / "job"), stdout=subprocess.PIPE, text=True)
    events = [slicer_run.parse_line(line) for line in proc.stdout]
    assert proc.wait(timeout=600) == 0
    assert any(k == "progress" for k, _ in events) and events[-1][0] == "done"
    job = slicer_run.load_job(events[-1][1])
    from SegXAILib.volume import read_volume

    assert job["labels"].same_geometry(read_volume(CT), atol=1e-4)
    assert job["classes"][1].name == "liver" and job["classes"][1].snomed_code == "10200004"
    assert job["maps"] == [] and job["provenance"]["model"]
