"""Training pieces: per-case label groups, the marginal Dice+CE loss, patch sampling, and a short real run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SegXAILib.errors import SegXAIError
from SegXAILib.models.store import load_model
from SegXAILib.training import Augmenter, Case, load_config, marginal_dice_ce, membership_matrix, tone_curve, train

CLASSES = ["liver", "liver tumor", "spleen"]


def test_membership_puts_unannotated_classes_in_the_background_group():
    case = Case("x", None, None, {5: ["liver", "liver tumor"], 1: ["spleen"]})
    m, lookup, names = membership_matrix(case, CLASSES)
    # groups: 0 = background (+ nothing unannotated here), 1 = spleen (value 1), 2 = liver+tumour (value 5)
    assert lookup == {1: 1, 5: 2}
    assert m.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0]]
    case = Case("y", None, None, {1: ["liver"], 2: ["liver tumor"]})
    m, _, names = membership_matrix(case, CLASSES)
    assert m[0].tolist() == [1, 0, 0, 1]  # spleen is unknown here: it may hide in the background
    assert names[0] == "background+spleen"


def _loss(logits, groups, member):
    g = torch.as_tensor(groups)[None].long()
    return marginal_dice_ce(logits, g, torch.as_tensor(member)[None], torch.tensor([member.shape[0]]))


def test_an_unannotated_class_is_not_taught_as_background():
    """Predicting spleen where a liver-only case says 'background' costs nothing; predicting liver there does."""
    case = Case("y", None, None, {1: ["liver"], 2: ["liver tumor"]})
    member, _, _ = membership_matrix(case, CLASSES)
    groups = np.zeros((1, 4, 4), dtype=np.int64)
    groups[0, :2] = 1  # liver in the top half
    def logits_for(bg_class):
        lg = torch.full((1, 4, 1, 4, 4), -10.0)
        lg[0, 1, 0, :2] = 10.0  # liver right
        lg[0, bg_class, 0, 2:] = 10.0  # the rest: background or spleen
        return lg
    as_background = _loss(logits_for(0), groups, member)
    as_spleen = _loss(logits_for(3), groups, member)
    as_liver = _loss(logits_for(1), groups, member)
    assert abs(float(as_background) - float(as_spleen)) < 1e-4
    assert float(as_liver) > float(as_background) + 0.5


def test_loss_decreases_towards_the_truth():
    case = Case("y", None, None, {1: ["liver"]})
    member, _, _ = membership_matrix(case, CLASSES)
    groups = np.zeros((1, 4, 4), dtype=np.int64)
    groups[0, 1:3, 1:3] = 1
    good = torch.full((1, 4, 1, 4, 4), -5.0)
    good[0, 0] = 5.0
    good[0, 0, 0, 1:3, 1:3] = -5.0
    good[0, 1, 0, 1:3, 1:3] = 5.0
    assert float(_loss(good, groups, member)) < 0.05
    assert float(_loss(torch.zeros(1, 4, 1, 4, 4), groups, member)) > 0.5


def _config(tmp_path, data_dir, steps):
    cfg = {
        "name": "tiny",
        "architecture": "residual_unet",
        "data_root": str(data_dir),
        "classes": ["liver", "spleen"],
        "cases": [
            {"id": "A", "image": "totalseg_example/ct.nii.gz", "label": "totalseg_example/organs_v1.nii.gz", "groups": {"5": ["liver"], "1": ["spleen"]}},
            {"id": "B", "image": "totalseg_dicom/dicom", "label": "totalseg_dicom/liver.nii.gz", "groups": {"1": ["liver"]}},
        ],
        "validation": ["B"],
        "input": {"spacing": [6.0, 6.0, 6.0], "patch": [32, 32, 32]},
        "arch_args": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "train": {"steps": steps, "steps_per_epoch": steps, "batch_size": 2, "lr": 0.01},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def test_the_tone_curve_changes_contrast_but_keeps_tissue_order():
    rng = np.random.default_rng(3)
    levels = np.linspace(0, 1, 501, dtype=np.float32)  # every windowed HU level, -200..300 HU
    moved = []
    for _ in range(20):
        out = tone_curve(levels, rng, 0.1, 6)
        assert out.dtype == np.float32 and out.shape == levels.shape
        assert np.all(np.diff(out) >= 0)  # fat < liver < vessel stays true
        assert np.abs(out - levels).max() <= 0.1 + 1e-6
        moved.append(np.abs(out - levels).max())
    assert np.mean(moved) > 0.03  # it really changes the contrast
    # liver (~100 HU, 0.6) against fat (-100 HU, 0.2): the gap differs from draw to draw
    gaps = [np.interp([0.2, 0.6], levels, tone_curve(levels, rng, 0.1, 6)) @ [-1, 1] for _ in range(20)]
    assert np.std(gaps) > 0.02


def test_the_augmenter_applies_the_tone_curve_only_when_asked():
    image = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 16, 1))
    groups = np.zeros(image.shape, dtype=np.uint8)
    plain = {"probability": 0.0, "intensity_shift": 0, "intensity_scale": 0, "noise_std": 0, "gamma": [1, 1]}
    off = Augmenter(plain, seed=0)
    assert all(np.array_equal(off(image, groups)[0], image) for _ in range(5))
    on = Augmenter(dict(plain, contrast_curve=0.1), seed=0)
    changed = [not np.allclose(on(image, groups)[0], image) for _ in range(20)]
    assert 3 <= sum(changed) <= 17  # about half the patches


def test_a_short_real_training_run_writes_a_loadable_model(tmp_path, data_dir):
    cfg = load_config(_config(tmp_path, data_dir, steps=12))
    logs = []
    card = train(cfg, tmp_path / "model", torch.device("cpu"), log=logs.append, command="segxai train (test)")
    model = load_model(tmp_path / "model")
    assert model.card.name == "tiny" and [c.name for c in model.card.foreground] == ["liver", "spleen"]
    history = card.training["history"]
    assert len(history) == 1 and "liver" in history[0]["val_dice"]["B"]
    assert card.training["cases"][0]["id"] == "A" and card.training["validation_cases"][0]["id"] == "B"
    assert (tmp_path / "model" / "checkpoint" / "model.safetensors").exists()


def test_bf16_training_learns_like_fp32_and_says_so_in_the_card(tmp_path, data_dir):
    # autocast runs on any CPU (emulated where bf16 is not native), so the path GPUs and AMX CPUs take is tested
    cfg = load_config(_config(tmp_path, data_dir, steps=8))
    cfg.validation = []
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg.train["precision"] = precision
        card = train(cfg, tmp_path / precision, torch.device("cpu"), log=lambda s: None)
        losses[precision] = card.training["history"][-1]["loss"]
        assert card.training["precision"] == ("bf16 autocast" if precision == "bf16" else "fp32")
    print("mean loss over 8 steps, fp32 / bf16:", losses)
    assert losses["bf16"] != losses["fp32"]  # the network really ran in bf16
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"]  # same data, seed and steps: same learning


def test_config_errors_are_clear(tmp_path, data_dir):
    path = _config(tmp_path, data_dir, 1)
    cfg = json.loads(path.read_text())
    cfg["cases"][0]["groups"] = {"5": ["pancreas"]}
    path.write_text(json.dumps(cfg))
    with pytest.raises(SegXAIError, match="pancreas"):
        load_config(path)
    cfg["cases"][0]["groups"] = {"5": ["liver"]}
    cfg["cases"][0]["image"] = "nowhere.nii.gz"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SegXAIError, match="does not exist"):
        load_config(path)
    cfg["cases"][0]["image"] = "totalseg_example/ct.nii.gz"
    cfg["train"]["precision"] = "fp8"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SegXAIError, match="unknown training precision 'fp8'"):
        load_config(path)
