"""Cross-validation folds and declared case geometry: which cases each fold trains and tests on, that a
class no training case annotates leaves the fold's model, and a real (tiny) fold run with its table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SegXAILib.cli import main
from SegXAILib.errors import SegXAIError
from SegXAILib.folds import collect, fold_config, make_folds, markdown_table, run_fold
from SegXAILib.training import declared_geometry, load_config
from SegXAILib.volume import Volume, write_volume


def _config(tmp_path, data_dir, steps=2):
    cfg = {
        "name": "tiny",
        "architecture": "residual_unet",
        "data_root": str(data_dir),
        "classes": ["liver", "liver tumor", "spleen"],
        "cases": [
            {"id": "A", "patient": "A", "dataset": "TotalSegmentator", "image": "totalseg_example/ct.nii.gz",
             "label": "totalseg_example/organs_v1.nii.gz", "groups": {"5": ["liver", "liver tumor"], "1": ["spleen"]}},
            {"id": "B", "patient": "B", "dataset": "TotalSegmentator", "image": "totalseg_dicom/dicom",
             "label": "totalseg_dicom/liver.nii.gz", "groups": {"1": ["liver", "liver tumor"]}},
            {"id": "C", "patient": "C", "dataset": "IRCAD", "image": "ircad_1.17/ct.nii.gz",
             "label": "ircad_1.17/label.nii.gz", "groups": {"1": ["liver"], "2": ["liver tumor"]}},
        ],
        "input": {"spacing": [8.0, 8.0, 8.0], "patch": [32, 32, 32]},
        "arch_args": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "train": {"steps": steps, "steps_per_epoch": steps, "batch_size": 1, "lr": 0.01},
        "postprocessing": {"largest_component": ["liver", "spleen"], "inside": {"liver tumor": "liver"}},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def test_folds_leave_each_patient_out_and_train_on_one_source_at_a_time(tmp_path, data_dir):
    cfg = load_config(_config(tmp_path, data_dir))
    lopo = make_folds(cfg, "lopo")
    assert [(f.name, f.train, f.test) for f in lopo] == [
        ("lopo-a", ["B", "C"], ["A"]), ("lopo-b", ["A", "C"], ["B"]), ("lopo-c", ["A", "B"], ["C"])]
    cross = make_folds(cfg, "cross-dataset")
    assert [(f.name, f.train, f.test) for f in cross] == [
        ("from-totalsegmentator", ["A", "B"], ["C"]), ("from-ircad", ["C"], ["A", "B"])]
    for fold in lopo + cross:
        assert not set(fold.train) & set(fold.test)
    with pytest.raises(SegXAIError, match="unknown fold scheme"):
        make_folds(cfg, "k-fold")


def test_a_class_no_training_case_annotates_leaves_the_fold_model(tmp_path, data_dir):
    cfg = load_config(_config(tmp_path, data_dir))
    folds = {f.name: f for f in make_folds(cfg, "lopo") + make_folds(cfg, "cross-dataset")}
    without_a = fold_config(cfg, folds["lopo-a"])  # only A labels the spleen
    assert without_a.classes == ["liver", "liver tumor"]
    assert without_a.postprocessing == {"largest_component": ["liver"], "inside": {"liver tumor": "liver"}}
    totalseg_only = fold_config(cfg, folds["from-totalsegmentator"])  # tumour never labelled apart from liver
    assert totalseg_only.classes == ["liver", "spleen"]
    assert totalseg_only.cases[0].groups == {5: ["liver"], 1: ["spleen"]}
    assert cfg.classes == ["liver", "liver tumor", "spleen"]  # the original config is untouched
    assert cfg.cases[0].groups[5] == ["liver", "liver tumor"]


def test_a_fold_trains_scores_the_left_out_patient_and_is_not_trained_twice(tmp_path, data_dir):
    cfg = load_config(_config(tmp_path, data_dir))
    fold = make_folds(cfg, "cross-dataset")[1]  # from-ircad: train on C, test on A and B
    logs = []
    record = run_fold(cfg, fold, tmp_path / "cv", torch.device("cpu"), log=logs.append)
    assert [r["case"] for r in record["results"]] == ["A", "B"]
    model = json.loads((tmp_path / "cv" / fold.name / "model" / "card.json").read_text())
    assert [c["id"] for c in model["training"]["cases"]] == ["C"]
    assert [c["name"] for c in model["classes"]][1:] == ["liver", "liver tumor"]
    # A's spleen is not scored (the fold's model has no spleen); its liver (+ tumour) is
    assert list(record["results"][0]["classes"]) == ["liver+liver tumor"]
    dice = record["results"][0]["classes"]["liver+liver tumor"]["dice"]
    assert 0.0 <= dice <= 1.0
    run_fold(cfg, fold, tmp_path / "cv", torch.device("cpu"), log=logs.append)
    assert any("using the finished model" in line for line in logs)
    table = markdown_table(collect([tmp_path / "cv"]), no_volume=("B",))
    assert "| cross-dataset | from-ircad (C) | 2 | 0 | A (A) | liver+liver tumor | " + f"{dice:.3f}" in table
    assert table.splitlines()[-1].endswith("| n/a |")  # B's volume error withheld
    from SegXAILib.folds import attach_to_card

    card_path = tmp_path / "card.json"
    # the bundled model of this recipe: same settings, a longer budget
    settings = dict(cfg.train, steps=1000)
    card_path.write_text(json.dumps({"name": "tiny", "training": {"settings": settings}, "metrics": {"held_out": {}}}))
    assert attach_to_card(collect([tmp_path / "cv"]), card_path) == 1
    written = json.loads(card_path.read_text())["metrics"]
    assert "held_out" in written and written["crossval"]["folds"][0]["results"]["A"]["liver+liver tumor"]["dice"] == dice
    assert written["crossval"]["folds"][0]["precision"] in ("fp32", "bf16 autocast")
    # a fold the card holds from an earlier run (its folder gone) stays; rerunning the same fold replaces it
    card = json.loads(card_path.read_text())
    gone = dict(card["metrics"]["crossval"]["folds"][0], steps=800)
    del gone["seed"]  # written before seeds were recorded: it ran with the card's seed, 0
    card["metrics"]["crossval"]["folds"].append(gone)
    card_path.write_text(json.dumps(card))
    assert attach_to_card(collect([tmp_path / "cv"]), card_path) == 1
    assert [f["steps"] for f in json.loads(card_path.read_text())["metrics"]["crossval"]["folds"]] == [800, 2]
    # another seed is another run of the same recipe: its own entry and its own table row, beside seed 0
    card = json.loads(card_path.read_text())
    card["training"]["settings"] = dict(settings, seed=7)  # the bundled model's seed does not make it another recipe
    card_path.write_text(json.dumps(card))
    again = collect([tmp_path / "cv"])[0]
    again["settings"] = dict(again["settings"], seed=1)
    assert attach_to_card([again], card_path) == 1
    folds = json.loads(card_path.read_text())["metrics"]["crossval"]["folds"]
    assert [(f["steps"], f["seed"]) for f in folds] == [(800, 0), (2, 0), (2, 1)]
    both = markdown_table(collect([tmp_path / "cv"]) + [again])
    assert "| 2 | 0 | A (A) |" in both and "| 2 | 1 | A (A) |" in both
    # entries written under another recipe of the model are dropped, not mixed in
    card = json.loads(card_path.read_text())
    card["metrics"]["crossval"]["recipe"] = dict(card["metrics"]["crossval"]["recipe"], lr=1.0)
    card_path.write_text(json.dumps(card))
    attach_to_card(collect([tmp_path / "cv"]), card_path)
    assert [(f["steps"], f["seed"]) for f in json.loads(card_path.read_text())["metrics"]["crossval"]["folds"]] == [(2, 0)]
    card_path.write_text(json.dumps({"name": "other", "training": {"settings": settings}}))
    with pytest.raises(SegXAIError, match="no fold"):
        attach_to_card(collect([tmp_path / "cv"]), card_path)
    # a model of the same name trained with another augmentation is another recipe: the folds do not describe it
    other = dict(settings, augment=dict(settings["augment"], contrast_curve=0.2))
    card_path.write_text(json.dumps({"name": "tiny", "training": {"settings": other}}))
    with pytest.raises(SegXAIError, match="earlier recipe"):
        attach_to_card(collect([tmp_path / "cv"]), card_path)


def test_crossval_command_prints_the_table_and_names_unknown_folds(tmp_path, data_dir, capsys):
    path = _config(tmp_path, data_dir)
    assert main(["crossval", "--config", str(path), "--scheme", "lopo", "--fold", "lopo-x", "-o", str(tmp_path / "cv")]) != 0
    assert "unknown fold" in capsys.readouterr().err
    assert main(["crossval", "--table", "-o", str(tmp_path / "nothing")]) != 0
    assert "no finished fold" in capsys.readouterr().err


def test_declared_geometry_puts_the_axes_where_the_anatomy_says(tmp_path):
    m = declared_geometry({"axes": ["S", "P", "L"], "spacing": [1.5, 1.0, 2.0]}, "case D")
    # RAS: i → superior (+z) 1.5 mm, j → posterior (−y) 1 mm, k → left (−x) 2 mm
    assert np.allclose(m[:3, :3], [[0, 0, -2.0], [0, -1.0, 0], [1.5, 0, 0]])
    for bad in ({"axes": ["S", "S", "L"], "spacing": [1, 1, 1]}, {"axes": ["S", "P", "Q"], "spacing": [1, 1, 1]},
                {"axes": ["S", "P", "L"], "spacing": [1, 0, 1]}, {"spacing": [1, 1, 1]}):
        with pytest.raises(SegXAIError, match="case D: geometry"):
            declared_geometry(bad, "case D")


def test_a_case_with_a_declared_geometry_reads_both_volumes_on_it(tmp_path):
    from SegXAILib.training import Case

    ct = np.random.default_rng(0).integers(-1000, 400, (6, 5, 4)).astype(np.int16)
    write_volume(Volume(ct, np.eye(4)), tmp_path / "ct.nii.gz")
    write_volume(Volume((ct > 0).astype(np.uint8), np.eye(4)), tmp_path / "label.nii.gz")
    case = Case("D", tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz", {1: ["liver"]},
                {"geometry": {"axes": ["S", "P", "L"], "spacing": [1.5, 1, 1]}})
    volume, label = case.read()
    assert volume.same_geometry(label) and np.array_equal(volume.array, ct)
    assert np.allclose(volume.spacing, [1.5, 1, 1]) and volume.ijk_to_ras[2, 0] == 1.5
    write_volume(Volume(np.zeros((3, 3, 3), np.uint8), np.eye(4)), tmp_path / "small.nii.gz")
    case.label = tmp_path / "small.nii.gz"
    with pytest.raises(SegXAIError, match="differs from the CT"):
        case.read()


def test_a_case_list_replaces_the_recipes_cases_and_validation(tmp_path, data_dir):
    path = _config(tmp_path, data_dir)
    cfg = json.loads(path.read_text())
    cfg["validation"] = ["B"]
    path.write_text(json.dumps(cfg))
    listed = tmp_path / "lists" / "cases.json"
    listed.parent.mkdir()
    listed.write_text(json.dumps({"data_root": str(data_dir), "cases": cfg["cases"][1:]}))
    replaced = load_config(path, cases_file=listed)
    assert [c.id for c in replaced.cases] == ["B", "C"] and replaced.validation == []
    assert replaced.arch_args["channels"] == [4, 8, 16]  # the recipe is kept
    with pytest.raises(SegXAIError, match="no case list"):
        load_config(path, cases_file=tmp_path / "missing.json")
