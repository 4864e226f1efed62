"""The ``segxai`` front door: segment writes both files on the input's exact grid; every bad input gets one
clear line and a non-zero exit, never a traceback, and nothing the user had is overwritten."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from conftest import make_sitk, rotation
from helpers import tiny_model_folder
from SegXAILib.cli import main
from SegXAILib.volume import read_volume


@pytest.fixture
def model_dir(tmp_path):
    return tiny_model_folder(tmp_path / "tiny-model")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write(path, array, spacing=(2.0, 2.0, 3.0), direction=np.eye(3), origin=(0.0, 0.0, 0.0)):
    sitk.WriteImage(make_sitk(array, spacing, direction, origin), str(path))
    return path


def test_segment_writes_both_files_on_an_oblique_input_grid(tmp_path, capsys, model_dir, ct_like):
    oblique = rotation("z", 25) @ rotation("x", 10)
    src = _write(tmp_path / "oblique.nrrd", ct_like, (1.7, 0.9, 2.5), oblique, (10.5, -20.25, 33.0))
    code, out, err = run(capsys, "segment", src, "-o", tmp_path / "out", "--model", model_dir, "--device", "cpu")
    assert code == 0, err
    vol = read_volume(src)
    labels = read_volume(tmp_path / "out" / "oblique_labels.nii.gz")
    assert labels.same_geometry(vol, atol=1e-5)
    seg = slicerio.read_segmentation(str(tmp_path / "out" / "oblique.seg.nrrd"))
    assert np.allclose(np.asarray(seg["ijkToLPS"]), vol.ijk_to_lps, atol=1e-5)
    names = [s["name"] for s in seg["segments"]]
    assert names == ["liver", "spleen"]
    liver = seg["segments"][0]
    assert liver["terminology"]["type"][1] == "10200004"
    assert "liver" in out and "mL" in out and "model tiny-residual_unet" in out


def test_segment_a_folder_and_a_ras_stored_input(tmp_path, capsys, model_dir, ct_like):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "a.nii.gz", ct_like, direction=np.diag([-1.0, -1.0, 1.0]), origin=(100.0, 50.0, 0.0))
    _write(folder / "b.mha", ct_like)
    code, out, err = run(capsys, "segment", folder, "-o", tmp_path / "out", "--model", model_dir)
    assert code == 0, err
    for stem, ext in (("a", ".nii.gz"), ("b", ".mha")):
        assert read_volume(tmp_path / "out" / f"{stem}_labels.nii.gz").same_geometry(read_volume(folder / f"{stem}{ext}"), atol=1e-5)


def test_existing_outputs_are_never_overwritten_without_the_flag(tmp_path, capsys, model_dir, ct_like):
    src = _write(tmp_path / "ct.nii.gz", ct_like)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "ct.seg.nrrd").write_text("the user's precious file")
    code, out, err = run(capsys, "segment", src, "-o", out_dir, "--model", model_dir)
    assert code == 1 and "--overwrite" in err and "Traceback" not in err
    assert (out_dir / "ct.seg.nrrd").read_text() == "the user's precious file"
    assert not (out_dir / "ct_labels.nii.gz").exists()
    code, _, err = run(capsys, "segment", src, "-o", out_dir, "--model", model_dir, "--overwrite")
    assert code == 0, err
    assert slicerio.read_segmentation(str(out_dir / "ct.seg.nrrd"))["segments"][0]["name"] == "liver"


def _bad_inputs(d, ct_like):
    nan = ct_like.astype(np.float32)
    nan[3, 3, 3] = np.nan
    return {
        "missing file": (d / "missing.nii.gz", "no such file"),
        "not an image": ((d / "notes.nii.gz"), "could not read"),
        "2D image": (_write2d(d / "slice.nrrd"), "2D"),
        "4D image": (_write4d(d / "series.nii.gz"), "4D"),
        "constant volume": (_write(d / "flat.nii.gz", np.zeros((8, 8, 8), np.int16)), "constant"),
        "NaN voxels": (_write(d / "nan.nrrd", nan), "NaN"),
    }


def _write2d(path):
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(path))
    return path


def _write4d(path):
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), str(path))
    return path


@pytest.mark.parametrize("case", ["missing file", "not an image", "2D image", "4D image", "constant volume", "NaN voxels"])
def test_bad_inputs_get_one_clear_line(tmp_path, capsys, model_dir, ct_like, case):
    (tmp_path / "notes.nii.gz").write_text("these are my notes")
    path, message = _bad_inputs(tmp_path, ct_like)[case]
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "out", "--model", model_dir)
    assert code == 1
    lines = [l for l in err.strip().splitlines() if l.startswith("segxai")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_broken_models_get_one_clear_line(tmp_path, capsys, model_dir, ct_like):
    src = _write(tmp_path / "ct.nii.gz", ct_like)
    card = json.loads((model_dir / "card.json").read_text())
    card["classes"] = card["classes"][:2]  # card says 2 classes, the weights give 3 channels
    (model_dir / "card.json").write_text(json.dumps(card))
    code, _, err = run(capsys, "segment", src, "-o", tmp_path / "o", "--model", model_dir)
    assert code == 1 and "does not fit" in err and "Traceback" not in err
    other = tiny_model_folder(tmp_path / "m2")
    (other / "model.safetensors").write_bytes(b"garbage" * 10)
    code, _, err = run(capsys, "segment", src, "-o", tmp_path / "o", "--model", other)
    assert code == 1 and "corrupt" in err
    code, _, err = run(capsys, "segment", src, "-o", tmp_path / "o", "--model", tmp_path / "no-such-model")
    assert code == 1 and "no model" in err


def test_evaluate_writes_a_table_csv_and_json(tmp_path, capsys, model_dir, ct_like):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    _write(images / "p1.nii.gz", ct_like)
    _write(labels / "p1.nii.gz", (ct_like > 100).astype(np.uint8))
    code, out, err = run(capsys, "evaluate", "--images", images, "--labels", labels, "--model", model_dir, "-o", tmp_path / "ev")
    assert code == 0, err
    assert "dice" in out and "p1" in out
    data = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    row = data["cases"][0]["classes"]["liver"]
    assert 0.0 <= row["dice"] <= 1.0 and row["volume_ref_ml"] > 0
    # the wrong regions are in the JSON report, and printed when there are any
    assert all(e["kind"] in ("false positive", "missed") and e["volume_ml"] >= 1.0 for e in row["errors"])
    assert ("largest errors" in out) == any(c["errors"] for c in data["cases"][0]["classes"].values())
    assert (tmp_path / "ev" / "evaluation.csv").read_text().count("\n") == 3  # header + liver + spleen


def test_evaluate_writes_its_figures_into_the_card_and_never_calls_a_training_case_a_test(tmp_path, capsys, model_dir, ct_like):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    _write(images / "p1.nii.gz", ct_like)
    _write(labels / "p1.nii.gz", (ct_like > 100).astype(np.uint8))
    argv = ["evaluate", "--images", images, "--labels", labels, "--model", model_dir, "-o", tmp_path / "ev"]
    code, out, err = run(capsys, *argv, "--write-card")
    assert code == 0, err
    card_path = model_dir / "card.json"
    metrics = json.loads(card_path.read_text())["metrics"]
    dice = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["cases"][0]["classes"]["liver"]["dice"]
    assert metrics["held_out"]["cases"]["p1"]["liver"]["dice"] == pytest.approx(dice, abs=1e-4)
    assert "training_cases_not_a_test" not in metrics
    assert metrics["evaluated_with"].startswith("segxai evaluate") and "--write-card" not in metrics["evaluated_with"]
    # the same case, now a training case of the model: its figure moves out of held_out
    card = json.loads(card_path.read_text())
    card.setdefault("training", {})["cases"] = [{"id": "p1", "licence": "test"}]
    card_path.write_text(json.dumps(card))
    code, out, err = run(capsys, *argv, "--write-card", "--overwrite")
    assert code == 0, err
    metrics = json.loads(card_path.read_text())["metrics"]
    assert metrics["held_out"]["patients"].startswith("none") and "cases" not in metrics["held_out"]
    assert metrics["training_cases_not_a_test"]["p1"]["liver"]["dice"] == pytest.approx(dice, abs=1e-4)


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "segment" in capsys.readouterr().out


def test_inputs_whose_outputs_would_collide_are_refused_before_any_work(tmp_path, capsys, model_dir, ct_like):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _write(tmp_path / sub / "ct.nii.gz", ct_like)
    code, _, err = run(capsys, "segment", tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nii.gz", "-o", tmp_path / "out", "--model", model_dir)
    assert code == 1 and "collide" in err
    assert not (tmp_path / "out").exists()


def test_evaluate_puts_a_reference_on_another_grid_onto_the_image_grid(tmp_path, capsys, model_dir, ct_like):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    _write(images / "p1.nii.gz", ct_like)
    # the same reference, stored flipped (RAS): same voxels in space, another array order
    ref = (ct_like > 100).astype(np.uint8)
    _write(labels / "p1.nii.gz", ref[:, ::-1, ::-1].copy(), direction=np.diag([-1.0, -1.0, 1.0]), origin=(54.0, 46.0, 0.0))
    code, out, err = run(capsys, "evaluate", "--images", images, "--labels", labels, "--model", model_dir, "-o", tmp_path / "ev")
    assert code == 0, err
    flipped = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["cases"][0]["classes"]["liver"]
    _write(labels / "p1.nii.gz", ref)
    code, out, err = run(capsys, "evaluate", "--images", images, "--labels", labels, "--model", model_dir, "-o", tmp_path / "ev", "--overwrite")
    plain = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["cases"][0]["classes"]["liver"]
    assert flipped["volume_ref_ml"] == plain["volume_ref_ml"] > 0
    assert flipped["dice"] == plain["dice"]


def test_bad_training_arguments_are_clear(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"name": "x", "cases": [{"image": "a"}]}))
    code, _, err = run(capsys, "train", "--config", cfg, "-o", tmp_path / "m")
    assert code == 1 and "malformed" in err and "Traceback" not in err


def test_training_options_override_the_config_and_refuse_zero_threads():
    import argparse

    from SegXAILib.cli import add_training_options, override_training
    from SegXAILib.errors import SegXAIError
    from SegXAILib.training import TrainConfig

    parser = argparse.ArgumentParser()
    add_training_options(parser, "steps")
    cfg = TrainConfig(name="m", architecture="unet", classes=["liver"], cases=[], validation=[])
    override_training(cfg, parser.parse_args(["--steps", "7", "--seed", "3", "--precision", "fp32"]))
    assert (cfg.train["steps"], cfg.train["seed"], cfg.train["precision"]) == (7, 3, "fp32")
    override_training(cfg, parser.parse_args([]))  # nothing given: the config's values stay
    assert (cfg.train["steps"], cfg.train["seed"]) == (7, 3)
    with pytest.raises(SegXAIError, match="--threads"):
        override_training(cfg, parser.parse_args(["--threads", "0"]))
