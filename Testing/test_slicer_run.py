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
    assert rows[2]["Energy in target"] == 0.7 and rows[0]["Layer"] == "a"
    with pytest.raises(TypeError):
        slicer_run.normalise_maps([("x", np.zeros(3), {}, False)])


def test_child_reports_error_as_one_line(tmp_path):
    options = slicer_run.options_from(tmp_path / "missing.nii.gz")
    out = subprocess.run(slicer_run.child_command(sys.executable, options, tmp_path / "job"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    kinds = [slicer_run.parse_line(line) for line in out.stdout.splitlines()]
    assert kinds[-1][0] == "error" and "no such file" in kinds[-1][1]


def cropped_ct(tmp_path) -> Path:
    """A 64×64×24 block of the shared CT around its centre, keeping its real origin, spacing and direction."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(CT))
    size = [min(n, m) for n, m in zip(image.GetSize(), (64, 64, 24))]
    start = [(n - s) // 2 for n, s in zip(image.GetSize(), size)]
    path = tmp_path / "ct_block.nii.gz"
    sitk.WriteImage(sitk.RegionOfInterest(image, size, start), str(path))
    return path


@pytest.mark.skipif(not CT.exists(), reason="shared CT not present")
def test_child_process_segments_and_parent_loads(tmp_path):
    ct = cropped_ct(tmp_path)
    options = slicer_run.options_from(ct, model=a_model(tmp_path), device="cpu")
    proc = subprocess.Popen(slicer_run.child_command(sys.executable, options, tmp_path / "job"), stdout=subprocess.PIPE, text=True)
    events = [slicer_run.parse_line(line) for line in proc.stdout]
    assert proc.wait(timeout=600) == 0
    assert any(k == "progress" for k, _ in events) and events[-1][0] == "done"
    job = slicer_run.load_job(events[-1][1])
    from SegXAILib.volume import read_volume

    assert job["labels"].same_geometry(read_volume(ct), atol=1e-4)
    assert job["classes"][1].name == "liver" and job["classes"][1].snomed_code == "10200004"
    assert job["maps"] == [] and job["provenance"]["model"]
    from SegXAILib import module_logic

    assert module_logic.card_of(job["manifest"]).name == job["provenance"]["model"]


# ---- scores reach the table (finding 8) ------------------------------------------------------------
def test_scores_rows_show_deletion_insertion_with_plain_names():
    """The report's quality holds the deletion/insertion AUCs beside their curves; the table must show the AUCs."""
    from SegXAILib import quality
    from SegXAILib.explaining import MethodResult

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32)
    saliency = np.abs(image)
    region = np.zeros(image.shape, bool)
    region[1:3, 1:4, 2:5] = True
    scores = quality.evaluate_map(saliency, image=image, baseline=np.zeros_like(image),
                                  score=lambda x: float(np.abs(x)[region].mean()), target_region=region, steps=10,
                                  which=("localisation", "deletion_insertion"))
    result = MethodResult(method="ig", map=Volume(saliency, np.eye(4)), model_map=saliency, params={"steps": 8},
                          seconds=0.1, checks={"totals": {"score": 1.0}, "completeness_error": 0.02}, quality=scores)
    (row,) = slicer_run.scores_rows(slicer_run.normalise_maps([result]))
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy's own integral, not quality.auc
    assert row["Deletion AUC"] == pytest.approx(trapezoid(scores["deletion_curve"], scores["curve_fractions"]))
    assert row["Insertion AUC"] == pytest.approx(trapezoid(scores["insertion_curve"], scores["curve_fractions"]))
    from scipy.ndimage import distance_transform_edt

    peak = np.unravel_index(int(np.argmax(saliency)), saliency.shape)  # within 5 mm (1 mm voxels) of the region?
    assert row["Peak inside the target"] == int(distance_transform_edt(~region)[peak] <= scores["pointing_game_tolerance_mm"])
    assert row["Relevance inside the target"] == pytest.approx(saliency[region].sum() / saliency.sum())
    assert row["Completeness error"] == 0.02 and row["Method"] == "ig" and row["Signed"] is True
    assert not any(isinstance(v, (list, dict)) for v in row.values()), "curves and totals are not table cells"


def test_score_labels_say_what_is_good():
    from SegXAILib import score_labels

    assert score_labels.plain_name("curves.deletion_auc") == "Deletion AUC"
    assert "lower is better" in score_labels.what_is_good("curves.deletion_auc")
    assert "higher is better" in score_labels.what_is_good("insertion_auc")
    assert score_labels.plain_name("new_score.some_auc") == "New score some AUC"
    rows = [{"Map": "ig", "Deletion AUC": 0.1, "Completeness error": 0.0}]
    assert [name for name, _ in score_labels.legend_rows(rows)] == ["Deletion AUC", "Completeness error"]


# ---- the background process (findings 5 and 10) -----------------------------------------------------
GRANDPARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
while True:
    time.sleep(0.1)
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as ended)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups; Windows uses taskkill /T")
def test_kill_tree_stops_the_grandchild(tmp_path):
    """PythonSlicer is a launcher: its Python child (here the grandchild) must stop on Cancel too."""
    import time

    from SegXAILib import process_tree

    pid_file = tmp_path / "grandchild.pid"
    process = process_tree.start([sys.executable, "-c", GRANDPARENT, str(pid_file)])
    assert process.stdout.readline().strip() == b"started"
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    process_tree.kill_tree(process)
    assert process.poll() is not None
    for _ in range(100):  # the kernel needs a moment to deliver the signal to the group
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived Cancel"


def test_background_job_survives_bytes_that_are_not_utf8():
    """A UnicodeDecodeError must not end the reader: the lines after it still arrive, and so does the end."""
    import time

    from SegXAILib.process_tree import BackgroundJob

    script = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe caf\\xe9\\n'); print('SEGXAI-DONE /x/manifest.json')"
    job = BackgroundJob([[sys.executable, "-c", script]]).start()
    events = []
    for _ in range(400):
        events += job.poll()
        if any(k == "finished" for k, _ in events):
            break
        time.sleep(0.025)
    lines = [p for k, p in events if k == "line"]
    assert lines[0] == b"\xff\xfe caf\xe9\n".decode("utf-8", errors="replace")
    assert slicer_run.parse_line(lines[1]) == ("done", "/x/manifest.json")
    assert events[-1] == ("finished", 0) and not job.running


def test_background_job_stops_at_the_first_failing_command(tmp_path):
    import time

    from SegXAILib.process_tree import BackgroundJob

    marker = tmp_path / "second-ran"
    fail = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    second = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    job = BackgroundJob([fail, second]).start()
    events = []
    for _ in range(400):
        events += job.poll()
        if not job.running:
            break
        time.sleep(0.025)
    assert ("line", "boom\n") in events and events[-1] == ("failed", (fail, 3))
    assert not marker.exists()


def test_windows_child_gets_no_console_window():
    """Finding 10: PythonSlicer.exe is a console program; without these flags each run opens a console."""
    from SegXAILib import process_tree

    options = process_tree.popen_options("nt")
    assert options["creationflags"] & 0x08000000  # CREATE_NO_WINDOW (Win32 process creation flags)
    if hasattr(subprocess, "CREATE_NO_WINDOW"):  # on Windows, Python's own constant
        assert options["creationflags"] & subprocess.CREATE_NO_WINDOW
        assert options["startupinfo"].wShowWindow == 0
    assert process_tree.popen_options("posix") == {"start_new_session": True}


# ---- dependencies (finding 10) ------------------------------------------------------------------------
def _plan(tmp_path, versions, importable):
    from SegXAILib import dependencies

    find_spec = lambda name: object() if name in importable else None  # noqa: E731
    return dependencies.plan("/slicer/bin/PythonSlicer", tmp_path, find_spec, versions.get)


def test_install_resolves_dependencies_but_never_replaces_torch_numpy_simpleitk(tmp_path):
    from packaging.requirements import Requirement

    versions = {"torch": "2.13.0+cpu", "numpy": "1.26.4", "SimpleITK": "2.4.1"}
    commands, message = _plan(tmp_path, versions, {"torch", "einops", "scipy", "safetensors", "slicerio", "nrrd", "tqdm"})
    (pip,) = commands
    assert pip[:4] == ["/slicer/bin/PythonSlicer", "-m", "pip", "install"] and "--no-deps" not in pip
    assert pip[-1] == "monai>=1.3" and "PyTorch" not in message
    constraints = Path(pip[pip.index("--constraint") + 1]).read_text().split()
    pins = {Requirement(line).name: Requirement(line).specifier for line in constraints}  # pip's own grammar
    assert set(pins) == {"torch", "numpy", "SimpleITK"}
    for name, version in versions.items():
        assert pins[name].contains(version, prereleases=True)
    assert not pins["numpy"].contains("2.1.0") and not pins["torch"].contains("2.14.0")


def test_old_or_missing_torch_is_installed_first_with_a_minimum_version(tmp_path):
    from packaging.version import Version

    from SegXAILib import dependencies

    for version in ("1.13.1", "2.0.1", "2.1.0", "2.9.1", "2.13.0+cpu", "10.0"):  # '2.13' < '2.2' as strings
        assert dependencies.torch_is_recent(version) == (Version(version) >= Version(dependencies.MINIMUM_TORCH))
    everything = set(dependencies.REQUIREMENTS)
    commands, message = _plan(tmp_path, {"torch": "1.13.1", "numpy": "1.26.4"}, everything | {"torch"})
    assert commands[-1][-2:] == ["install", "torch>=2.1"] and "light_the_torch" in commands[-1]
    assert "1.13.1 is installed" in message
    commands, _ = _plan(tmp_path, {"torch": "2.13.0"}, everything)  # metadata left, import impossible
    assert any("torch>=2.1" in c for c in commands)
    assert _plan(tmp_path, {"torch": "2.13.0"}, everything | {"torch"}) == ([], "")


# ---- the sample and the Windows import (findings 4 and UX) ----------------------------------------------
def test_sample_ct_is_offered_to_sample_data_by_a_url_urllib_can_read():
    import urllib.request

    from SegXAILib import module_logic

    source = module_logic.sample_data_source()
    with urllib.request.urlopen(source["uris"]) as response:  # what SampleData's downloader does
        data = response.read()
    assert data == module_logic.sample_ct().read_bytes()
    import hashlib

    assert source["checksums"] == "SHA256:" + hashlib.sha256(data).hexdigest()
    assert source["fileNames"].endswith(".nii.gz") and source["loadFileType"] == "VolumeFile"


def test_explaining_imports_and_reports_memory_without_resource_module(monkeypatch):
    """Finding 4: Windows has no ``resource``; explaining must import and peak_memory must still answer."""
    import ast

    import torch

    source = (Path(__file__).resolve().parents[1] / "SegXAILib" / "explaining.py").read_text()
    top_level = [a.name for node in ast.parse(source).body if isinstance(node, ast.Import) for a in node.names]
    top_level += [node.module for node in ast.parse(source).body if isinstance(node, ast.ImportFrom)]
    assert "resource" not in top_level, "a top-level import of resource fails on Windows"
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` now raises ImportError, as on Windows
    with pytest.raises(ImportError):
        import resource  # noqa: F401
    from SegXAILib import explaining

    assert explaining.peak_memory(torch.device("cpu")) == {}


def test_region_in_words_reads_the_strings_targets_parses():
    from SegXAILib import module_logic
    from SegXAILib.targets import parse_region

    text = "point:10.5,-20,30:15"
    spec = parse_region(text)
    words = module_logic.region_in_words(text, "liver")
    assert words == f"in a {spec.radius:g} mm ball around R {spec.point[0]:g}, A {spec.point[1]:g}, S {spec.point[2]:g}"
    assert module_logic.region_in_words("predicted", "liver") == "where the model finds liver"
    assert module_logic.region_in_words(None) == "where the model finds the target class"


def test_display_choices_reach_scene_show_results(tmp_path):
    """The panel's output segmentation, Show 3D, common scale and the card's metrics go to scene.show_results
    when it takes them (and are left out for a scene API that does not)."""
    import inspect

    from SegXAILib import module_logic, scene

    def older(input_node, labels, classes, maps, provenance, scene=None, opacity=0.4):
        return None

    assert module_logic.show_options(older, object(), True, False, {"held_out": {}}) == {}
    taken = set(inspect.signature(scene.show_results).parameters)
    options = module_logic.show_options(scene.show_results, "segmentation", True, False, {"held_out": {}})
    expected = {"segmentation_node": "segmentation", "show_3d": True, "scale": "map", "class_metrics": {"held_out": {}}}
    assert options == {k: v for k, v in expected.items() if k in taken}
    from SegXAILib.models.store import bundled_models, models_dir

    folder = shutil.copytree(models_dir() / bundled_models()[0], tmp_path / "moved", ignore=shutil.ignore_patterns("*.safetensors"))
    assert module_logic.card_of({"model_folder": str(folder), "model": "gone"}).name == bundled_models()[0]
    assert module_logic.card_of({"model_folder": str(tmp_path / "nowhere"), "model": "gone"}) is None


def test_slicer_builtin_numpy_without_pip_metadata_is_still_pinned(monkeypatch):
    import importlib.metadata

    import SimpleITK

    from SegXAILib import dependencies

    real = importlib.metadata.version

    def no_metadata(name):
        if name in ("numpy", "SimpleITK"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    assert dependencies.installed_version("numpy") == np.__version__
    assert dependencies.installed_version("SimpleITK") == SimpleITK.__version__
    assert dependencies.installed_version("no-such-distribution-segxai") is None


def test_run_summary_names_target_region_and_layer_in_plain_words():
    """The panel's summary of a run, from the metadata normalise_maps keeps for each map."""
    v = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))

    class Target:
        class_name, description, voxels = "liver", "predicted liver", 1234

    class Explained:
        layer, target = "model.1.submodule", Target()
        maps = [("gradcam", v, {"method": "gradcam"}, False), ("ig", v, {"method": "ig"}, True)]

    from SegXAILib import module_logic

    maps = slicer_run.normalise_maps(Explained())
    text = module_logic.describe_run({"model": "segxai-resunet-3mm", "device": "cpu", "region": "predicted"}, maps)
    assert text == ("Grad-CAM and Integrated gradients explain liver where the model finds liver (1,234 voxels); "
                    "layer model.1.submodule; model segxai-resunet-3mm on cpu.")
    assert module_logic.describe_run({"model": "m"}, []) == "Segmentation only (no explanation method chosen); model m."


def test_child_writes_utf8_whatever_the_console_code_page(tmp_path):
    """A child told PYTHONIOENCODING=cp1252 (a Windows console) still reports a non-ASCII path readably."""
    import time

    from SegXAILib.process_tree import BackgroundJob, child_environment

    env = child_environment({**__import__("os").environ, "PYTHONIOENCODING": "cp1252"})
    job = BackgroundJob([[sys.executable, "-c", "print('SEGXAI-ERROR no such file: /tmp/Ærø/ct.nii.gz')"]], env=env).start()
    events = []
    for _ in range(400):
        events += job.poll()
        if not job.running:
            break
        time.sleep(0.025)
    assert slicer_run.parse_line(events[0][1]) == ("error", "no such file: /tmp/Ærø/ct.nii.gz")


def test_explain_step_names_the_module_that_is_missing(monkeypatch):
    """An ImportError inside explaining (once: ``resource`` on Windows) must name the missing module."""
    for name in [m for m in sys.modules if m == "SegXAILib.explaining"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "SegXAILib.explainers", None)  # explaining imports its explainers
    import SegXAILib

    monkeypatch.delattr(SegXAILib, "explaining", raising=False)
    with pytest.raises(SegXAIError, match=r"SegXAILib\.explainers is missing"):
        slicer_run.explain_maps(None, None, None, {"methods": ["gradcam"]})


def test_every_score_the_quality_module_reports_has_a_plain_name():
    """quality.SCORES lists the keys evaluate_map reports; each number among them gets a plain column name and a
    line on what is good (context values, settings and curves are not score columns)."""
    from SegXAILib import quality, score_labels

    not_scores = ("context", "setting", "x axis", "falls fast", "rises fast", "stays high", "reference when")
    keys = [k for k, (_, good) in quality.SCORES.items() if not good.startswith(not_scores)]
    assert "deletion_auc" in keys and "road_morf_auc" in keys
    unnamed = [k for k in keys if score_labels._label(k) is None]
    assert not unnamed, f"scores without a plain name in score_labels.LABELS: {unnamed}"
    assert all(score_labels.what_is_good(k) for k in keys)
    assert score_labels.plain_name("body_deletion_auc") == "Deletion AUC, whole body"
    hidden = [k for k, (_, good) in quality.SCORES.items() if good.startswith(("context", "setting", "x axis"))]
    row = score_labels.flatten_scores({"scores": {k: 0.5 for k in hidden}})
    assert row == {}, f"context values shown as scores: {sorted(row)}"
