"""``segxai batch``: each case's folder is what ``segxai explain`` writes for that case alone; Dice in results.csv is a
voxel count on the written labels; a bad case fails alone with its one line; reruns skip what is done and redo
what changed; a run killed mid-case and restarted, and a Ray worker killed mid-case, both end with every case
done once and no partial file; Ray and local give the same table. Tiny random-weight models keep it fast."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import tiny_model_folder
from SegXAILib.batch.cases import read_cases, select_part
from SegXAILib.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: explain options both the batch and its oracle (segxai explain alone) get
OPTIONS = ["--methods", "hirescam,ig", "--steps", "4", "--region", "whole", "--target", "liver", "--scores",
           "localisation,complexity,deletion_insertion"]


def synthetic_ct(shift: int, spacing=(4.0, 4.0, 5.0)) -> tuple:
    """(CT image, its liver reference) : air around a body with a bright blob, the reference the blob."""
    k, j, i = np.mgrid[0:20, 0:24, 0:28]
    hu = np.full(k.shape, -1000, np.int16)
    hu[((j - 12) / 10.0) ** 2 + ((i - 14) / 12.0) ** 2 < 1] = 40
    blob = (k - 10) ** 2 + (j - 10) ** 2 + (i - 14 - shift) ** 2 < 20
    hu[blob] = 150
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetOrigin((-50.0, 20.0, 3.0 * shift))
    label = sitk.GetImageFromArray(blob.astype(np.uint8))
    label.CopyInformation(image)
    return image, label


def make_cohort(folder: Path) -> Path:
    """Two synthetic CTs with references, a text file named .nii.gz, a 2D image and an image with no air (not HU)."""
    cases = folder / "cases"
    cases.mkdir(parents=True)
    rows = ["case,image,reference"]
    for n in range(2):
        image, label = synthetic_ct(n)
        sitk.WriteImage(image, str(cases / f"ct{n}.nii.gz"))
        sitk.WriteImage(label, str(cases / f"ref{n}.nii.gz"))
        rows.append(f"ct{n},cases/ct{n}.nii.gz,cases/ref{n}.nii.gz")
    (cases / "corrupt.nii.gz").write_text("this is not an image\n")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 30), np.int16)), str(cases / "flat.nii.gz"))
    mri = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 900, (12, 20, 20)).astype(np.int16))
    sitk.WriteImage(mri, str(cases / "mri.nii.gz"))
    rows += ["corrupt,cases/corrupt.nii.gz,", "flat,cases/flat.nii.gz,", "mri,cases/mri.nii.gz,"]
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder / "cases.csv"


def batch(capsys, cases, out, model, *extra):
    code = main(["batch", str(cases), "-o", str(out), "--model", str(model), *OPTIONS, *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: Path) -> list:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def manifest(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (out / "manifest").glob("*.json")}


def leftovers(out: Path) -> list:
    """Anything a killed writer could leave: staging or retired folders, partial files."""
    return [p for p in out.rglob("*") if p.name.startswith((".partial-", ".retired-")) or ".partial" in p.name]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The cohort, a tiny model, and one finished local run of it (shared by the read-only tests)."""
    folder = tmp_path_factory.mktemp("cohort")
    cases = make_cohort(folder)
    model = tiny_model_folder(folder / "model")
    out = folder / "out-local"
    code = main(["batch", str(cases), "-o", str(out), "--model", str(model), *OPTIONS, "--threads", "1"])
    return {"folder": folder, "cases": cases, "model": model, "out": out, "code": code}


def volumes_equal(a: Path, b: Path) -> None:
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert np.array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib)), a.name
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(ia, get)(), getattr(ib, get)(), atol=1e-9), (a.name, get)


def report_without_run_details(path: Path) -> dict:
    report = json.loads(path.read_text())
    for key in ("seconds", "peak_memory", "files", "input", "reference"):
        report.pop(key, None)
    for m in report["methods"].values():
        m.pop("seconds", None)
    return report


def assert_same_case_folder(mine: Path, oracle: Path) -> None:
    names = sorted(p.name for p in mine.iterdir())
    assert names == sorted(p.name for p in oracle.iterdir())
    for name in names:
        if name.endswith((".nii.gz", ".nrrd")):
            volumes_equal(mine / name, oracle / name)
        elif name.endswith("_explain.json"):
            assert report_without_run_details(mine / name) == report_without_run_details(oracle / name)


def test_each_case_folder_is_what_segxai_explain_writes_for_that_case_alone(cohort, capsys, tmp_path):
    assert cohort["code"] == 0
    folder = cohort["folder"]
    for n in range(2):
        oracle = tmp_path / f"explain-ct{n}"
        code = main(["explain", str(folder / "cases" / f"ct{n}.nii.gz"), "-o", str(oracle), "--model", str(cohort["model"]),
                     *OPTIONS, "--reference", str(folder / "cases" / f"ref{n}.nii.gz")])
        capsys.readouterr()
        assert code == 0
        assert_same_case_folder(cohort["out"] / f"ct{n}", oracle)
    report = json.loads((cohort["out"] / "ct0" / "ct0_explain.json").read_text())
    assert report["files"]["hirescam"] == str(cohort["out"] / "ct0" / "ct0_hirescam_liver.nrrd")  # the final place


def test_results_dice_and_volume_are_voxel_counts_on_the_written_labels(cohort):
    rows = {(r["case"], r["class"]): r for r in table(cohort["out"]) if r["status"] == "done"}
    assert {c for c, _ in rows} == {"ct0", "ct1"}
    for n in range(2):
        labels = sitk.ReadImage(str(cohort["out"] / f"ct{n}" / f"ct{n}_labels.nii.gz"))
        pred = sitk.GetArrayFromImage(labels)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort["folder"] / "cases" / f"ref{n}.nii.gz"))) == 1
        liver = pred == 1
        dice = 2 * np.count_nonzero(liver & ref) / (np.count_nonzero(liver) + np.count_nonzero(ref))
        row = rows[(f"ct{n}", "liver")]
        assert float(row["dice"]) == pytest.approx(dice, rel=1e-12)
        voxel_ml = np.prod(labels.GetSpacing()) / 1000
        assert float(row["volume_ml"]) == pytest.approx(np.count_nonzero(liver) * voxel_ml, rel=1e-9)
        assert float(rows[(f"ct{n}", "spleen")]["volume_ml"]) == pytest.approx(np.count_nonzero(pred == 2) * voxel_ml, rel=1e-9)
        assert row["explained"] == "true" and row["hirescam_energy_inside"] and row["ig_completeness_error"]
        assert rows[(f"ct{n}", "spleen")]["dice"] == ""  # no spleen in the reference: nothing to compare


def test_bad_cases_fail_alone_with_one_line_each(cohort):
    rows = {r["case"]: r for r in table(cohort["out"]) if r["status"] == "failed"}
    assert set(rows) == {"corrupt", "flat", "mri"}
    assert "could not read" in rows["corrupt"]["error"] and "corrupt.nii.gz" in rows["corrupt"]["error"]
    assert "3D" in rows["flat"]["error"] or "2D" in rows["flat"]["error"]
    assert "not a CT in Hounsfield units" in rows["mri"]["error"]
    assert all("\n" not in r["error"] and "Traceback" not in r["error"] for r in rows.values())
    summary = (cohort["out"] / "summary.md").read_text()
    assert "5 case(s): 2 done, 3 failed" in summary
    for name, row in rows.items():
        assert f"`{name}`" in summary and row["error"] in summary
    assert (cohort["out"] / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not leftovers(cohort["out"])


def test_results_parquet_holds_the_csv_rows(cohort):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.read_parquet(cohort["out"] / "results.parquet")
    rows = table(cohort["out"])
    assert list(frame["case"]) == [r["case"] for r in rows]
    done = frame[(frame["case"] == "ct0") & (frame["class"] == "liver")]
    assert float(done["dice"].iloc[0]) == float(next(r["dice"] for r in rows if r["case"] == "ct0" and r["class"] == "liver"))


def copy_cohort(cohort, tmp_path) -> Path:
    import shutil

    shutil.copytree(cohort["folder"] / "cases", tmp_path / "cases")
    shutil.copy(cohort["cases"], tmp_path / "cases.csv")
    return tmp_path / "cases.csv"


def test_a_rerun_skips_what_is_done_and_redoes_what_changed(cohort, capsys, tmp_path):
    cases, out = copy_cohort(cohort, tmp_path), tmp_path / "out"
    assert batch(capsys, cases, out, cohort["model"])[0] == 0
    first = manifest(out)
    code, text, _ = batch(capsys, cases, out, cohort["model"])
    assert code == 0 and "ran 3, skipped 2" in text  # the failed ones are tried again, the done ones not
    assert {n: r["finished_at"] for n, r in manifest(out).items() if r["status"] == "done"} == \
           {n: r["finished_at"] for n, r in first.items() if r["status"] == "done"}
    image, _ = synthetic_ct(1, spacing=(4.0, 4.0, 4.0))  # the input changed: only that case is redone
    sitk.WriteImage(image, str(tmp_path / "cases" / "ct1.nii.gz"))
    time.sleep(1.1)  # finished_at has one-second resolution
    code, text, _ = batch(capsys, cases, out, cohort["model"])
    now = manifest(out)
    assert "ran 4, skipped 1" in text and now["ct0"]["finished_at"] == first["ct0"]["finished_at"]
    assert now["ct1"]["key"]["input_sha256"] != first["ct1"]["key"]["input_sha256"]
    spacing = sitk.ReadImage(str(out / "ct1" / "ct1_labels.nii.gz")).GetSpacing()
    assert spacing == pytest.approx((4.0, 4.0, 4.0))  # the redone case's outputs replaced the old ones
    code, text, _ = batch(capsys, cases, out, cohort["model"], "--scores", "localisation")
    assert "ran 5, skipped 0" in text  # other parameters: everything again
    assert not leftovers(out)


def test_a_case_list_group_of_two_classes_is_scored_as_their_union(cohort, capsys, tmp_path):
    """A case list whose label value 1 means liver and spleen together (as patient A's 5 means liver+liver tumor)."""
    folder = cohort["folder"] / "cases"
    (tmp_path / "list.json").write_text(json.dumps({"data_root": str(folder), "cases": [
        {"id": "grouped", "image": "ct0.nii.gz", "label": "ref0.nii.gz", "groups": {"1": ["liver", "spleen"]}}]}))
    code, _, _ = batch(capsys, tmp_path / "list.json", tmp_path / "out", cohort["model"])
    assert code == 0
    labels = sitk.ReadImage(str(tmp_path / "out" / "grouped" / "ct0_labels.nii.gz"))
    pred = np.isin(sitk.GetArrayFromImage(labels), [1, 2])
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ref0.nii.gz"))) == 1
    row = next(r for r in table(tmp_path / "out") if r["class"] == "liver+spleen")
    assert float(row["dice"]) == pytest.approx(2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum()), rel=1e-12)
    assert float(row["volume_ml"]) == pytest.approx(pred.sum() * np.prod(labels.GetSpacing()) / 1000, rel=1e-9)


def test_shards_split_the_cases_and_build_one_table(cohort, capsys, tmp_path):
    cases, out = copy_cohort(cohort, tmp_path), tmp_path / "out"
    specs = read_cases(str(cases))
    parts = [select_part(specs, f"{k}/2") for k in (1, 2)]
    assert sorted(c.name for p in parts for c in p) == sorted(c.name for c in specs) and all(parts)
    for k in (1, 2):
        code, text, _ = batch(capsys, cases, out, cohort["model"], "--part", f"{k}/2", "--threads", "1")
        assert f"{len(parts[k - 1])} case(s) (part {k}/2" in text
        assert {r["case"] for r in table(out)} == {c.name for p in parts[:k] for c in p}
    mine = (out / "results.csv").read_text().replace(str(tmp_path), "DIR")
    assert mine == (cohort["out"] / "results.csv").read_text().replace(str(cohort["folder"]), "DIR")


def test_a_run_killed_mid_case_and_restarted_ends_with_every_case_done_once(cohort, capsys, tmp_path):
    cases, out, marker = copy_cohort(cohort, tmp_path), tmp_path / "out", tmp_path / "hung"
    env = dict(os.environ, SEGXAI_BATCH_FAULT="ct1:hang", SEGXAI_BATCH_FAULT_MARKER=str(marker), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "SegXAILib.cli", "batch", str(cases), "-o", str(out), "--model", str(cohort["model"]), *OPTIONS,
            "--threads", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(1200):  # bounded polling: ct1 is hung with its files half written once the marker appears
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.25)
    assert marker.exists(), proc.communicate()[0].decode()[-2000:]
    assert (out / "ct0").is_dir() and list(out.glob(".partial-ct1-*")) and not (out / "ct1").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = manifest(out)
    assert before["ct0"]["status"] == "done" and "ct1" not in before
    code, text, _ = batch(capsys, cases, out, cohort["model"], "--threads", "1")  # restarted (in this process)
    assert code == 0 and "ran 4, skipped 1" in text
    after = manifest(out)
    assert after["ct0"]["finished_at"] == before["ct0"]["finished_at"]  # not redone
    assert after["ct1"]["status"] == "done" and after["ct1"]["worker_pid"] != int(marker.read_text())
    assert {r["case"] for r in table(out) if r["status"] == "done"} == {"ct0", "ct1"}
    assert not leftovers(out)
    assert_same_case_folder(out / "ct1", cohort["out"] / "ct1")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray for this module's tests (2 CPUs, as on CI), its workers told to die once in case ct1 mid-write;
    segxai batch joins a running session and leaves it running."""
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("ray") / "killed"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "SEGXAI_BATCH_FAULT": "ct1:exit", "SEGXAI_BATCH_FAULT_MARKER": str(marker), "OMP_NUM_THREADS": "1"}})
    yield marker
    ray.shutdown()


def test_ray_gives_the_same_table_as_local_with_a_worker_killed_mid_case(cohort, capsys, tmp_path, ray_session):
    out, marker = tmp_path / "out-ray", ray_session
    code, text, _ = batch(capsys, cohort["cases"], out, cohort["model"], "--engine", "ray", "--threads", "1")
    assert code == 0 and marker.exists()
    records = manifest(out)
    assert records["ct1"]["status"] == "done" and records["ct1"]["worker_pid"] != int(marker.read_text())
    # Ray resamples in the read tasks (overlapping inference), local in its one process: the same outputs
    assert {r["preprocessed_by"] for r in records.values() if r["status"] == "done"} == {"read task"}
    assert {r["preprocessed_by"] for r in manifest(cohort["out"]).values() if r["status"] == "done"} == {"worker"}
    assert (out / "results.csv").read_text() == (cohort["out"] / "results.csv").read_text()
    for n in range(2):
        assert_same_case_folder(out / f"ct{n}", cohort["out"] / f"ct{n}")
    assert not leftovers(out)


def test_without_ray_the_ray_engine_says_what_to_install(cohort, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, out, err = batch(capsys, cohort["cases"], tmp_path / "out", cohort["model"], "--engine", "ray")
    assert code == 1 and err.count("\n") == 1 and "pip install" in err and "ray" in err
    assert not (tmp_path / "out").exists()


def test_cases_come_from_a_folder_a_glob_a_csv_or_a_case_list(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "ct.nii.gz").write_bytes(b"")
    (tmp_path / "a" / "x.nrrd").write_bytes(b"")
    assert [c.name for c in read_cases(str(tmp_path / "a"))] == ["ct", "x"]
    assert [c.name for c in read_cases(str(tmp_path / "*" / "ct.nii.gz"))] == ["a", "b"]  # clashing stems: the folders
    (tmp_path / "list.csv").write_text("CT,Label,Target\na/ct.nii.gz,a/x.nrrd,spleen\nb/ct.nii.gz,,\n")
    specs = read_cases(str(tmp_path / "list.csv"))
    assert [(c.name, c.reference, c.target) for c in specs] == [
        ("a", str(tmp_path / "a" / "x.nrrd"), "spleen"), ("b", None, None)]
    listed = read_cases(str(ROOT / "configs" / "cases" / "all-patients.json"))
    assert [c.name for c in listed] == ["ircad_1.17", "lits_117_crop", "totalseg_dicom", "totalseg_example"]
    assert listed[3].groups[5] == ["liver", "liver tumor"] and listed[1].geometry["axes"] == ["S", "P", "L"]


@pytest.mark.parametrize("argv, says", [
    (["nowhere/*.nii.gz"], "matches no file"),
    (["{csv}", "--part", "3/2"], "--part"),
    (["{csv}", "--address", "auto"], "--engine ray"),
])
def test_bad_batch_arguments_get_one_line(tmp_path, capsys, argv, says):
    (tmp_path / "c.csv").write_text("image\nct.nii.gz\n")
    argv = [a.replace("{csv}", str(tmp_path / "c.csv")) for a in argv]
    code = main(["batch", *argv, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and says in err and err.count("\n") == 1


@pytest.mark.slow
def test_ray_and_local_give_the_same_table_on_a_shared_patient(data_dir, capsys, tmp_path, ray_session):
    """Patient D (liver and tumour labelled apart, a declared geometry) with the bundled U-Net."""
    listed = json.loads((ROOT / "configs" / "cases" / "all-patients.json").read_text())
    chosen = [c for c in listed["cases"] if c["id"] == "lits_117_crop"]
    (tmp_path / "cases.json").write_text(json.dumps({"data_root": str(data_dir), "cases": chosen}))
    argv = ["batch", str(tmp_path / "cases.json"), "--model", "segxai-resunet-3mm", "--methods", "hirescam",
            "--scores", "localisation", "--threads", "1"]
    assert main(argv + ["-o", str(tmp_path / "local")]) == 0
    assert main(argv + ["-o", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    capsys.readouterr()
    rows = {(r["case"], r["class"]): r for r in table(tmp_path / "local")}
    assert {r["status"] for r in rows.values()} == {"done"}
    assert float(rows[("lits_117_crop", "liver")]["dice"]) > 0.5  # a training patient of the model
    assert rows[("lits_117_crop", "liver tumor")]["dice"] != ""
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()


def test_the_report_names_the_reference_only_when_review_would_read_it_the_same():
    """segxai review reads a recorded reference by the target's label value: a case list that renames the labels
    (liver = 5 in the file, 1 in the model) must not leave the raw file in the report, where review would take
    label 1 (another organ) for the liver."""
    from SegXAILib.batch.per_case import reviewable
    from SegXAILib.volume import Volume

    raw = np.zeros((4, 6, 6), np.uint8)
    raw[:, :3] = 5  # liver in the file
    raw[:, 4:] = 1  # spleen in the file: value 1, the model's liver value
    renamed = np.where(raw == 5, 1, np.where(raw == 1, 2, 0)).astype(np.uint8)
    assert not reviewable(Volume(raw, np.eye(4)), Volume(renamed, np.eye(4)), 1)
    same = np.where(raw == 5, 1, 0).astype(np.uint8)
    assert reviewable(Volume(same, np.eye(4)), Volume(same, np.eye(4)), 1)
    assert not reviewable(None, Volume(same, np.eye(4)), 1)
