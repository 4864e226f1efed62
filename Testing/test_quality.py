"""evaluate_map (every key in SCORES, JSON-able, groups and errors), the controls, the body mask and the removal
baseline; Ctrl-C in ``segxai explain`` (the scores themselves are checked against oracles in test_quality_*.py,
their wiring into explain_volume and the CLI in test_explaining.py)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegXAILib.errors import SegXAIError
from SegXAILib.preprocessing import IntensityWindow
from SegXAILib.quality import (DEFAULT_GROUPS, GROUPS, SCORES, body_region, control_maps, evaluate_map,
                               removal_baseline)
from test_quality_faithfulness import linear_problem
from test_tiling import oblique_ct, tiny_model

torch.set_num_threads(1)


def test_evaluate_map_returns_flat_json_with_documented_keys_and_ranks_the_truth_first():
    # baseline 0.5: the mean of the i.i.d. image, which is also about what ROAD's imputation fills in, so the
    # true map w*(x - 0.5) is the truth for ROAD too
    image, baseline, w, region, score, truth = linear_problem(shape=(10, 10, 10), baseline_value=0.5)
    body = np.ones(image.shape, dtype=bool)
    reference = np.zeros(image.shape, dtype=bool)
    reference[2:5, 2:5, 2:5] = True
    results = {}
    for name, sal in {"truth": truth, **control_maps(image, region, seed=0)}.items():
        out = evaluate_map(sal, image=image, baseline=baseline, score=score, target_region=region,
                           body_region=body, reference=reference, spacing=(3.0, 3.0, 3.0), steps=10, which=GROUPS)
        assert set(out) <= set(SCORES), set(out) - set(SCORES)
        assert all(not isinstance(v, (dict, np.ndarray)) for v in out.values())  # flat
        json.dumps(out, allow_nan=True)
        results[name] = out
    # every group asked for: every documented key present (the randomisation keys come from the cascade)
    assert set(results["truth"]) == {k for k in SCORES if not k.startswith("randomisation_")}
    assert results["truth"]["localisation_against"] == "reference"
    for control in ("random", "edge"):
        for key, better in (("deletion_auc", -1), ("insertion_auc", 1), ("road_morf_auc", -1),
                            ("faithfulness_correlation", 1), ("body_deletion_auc", -1)):
            assert better * (results["truth"][key] - results[control][key]) > 0, (control, key)
    default = evaluate_map(truth, image=image, baseline=baseline, score=score, target_region=region, steps=10)
    assert default["localisation_against"] == "prediction" and "road_morf_auc" not in default
    assert set(DEFAULT_GROUPS) < set(GROUPS)


def test_evaluate_map_refuses_bad_requests_before_scoring():
    image, baseline, w, region, score, truth = linear_problem()
    calls = []

    def counting(x):
        calls.append(1)
        return score(x)

    kw = dict(image=image, baseline=baseline, score=counting, target_region=region)
    with pytest.raises(SegXAIError, match="below the minimum"):
        evaluate_map(truth, steps=5, **kw)
    with pytest.raises(SegXAIError, match="unknown score group"):
        evaluate_map(truth, which=("deletion",), **kw)
    with pytest.raises(SegXAIError, match="body_region"):
        evaluate_map(truth, which=("body_deletion_insertion",), **kw)
    with pytest.raises(SegXAIError, match="not on the target's grid"):
        evaluate_map(truth[:-1], **kw)
    assert not calls


def test_control_maps():
    k = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((12, 9, 9), np.float32)
    maps = control_maps(0.5 * k, seed=3)
    # Sobel of a ramp of slope 0.5 along one axis: derivative [-1, 0, 1] and two [1, 2, 1] smoothings = 32 x slope
    assert np.allclose(maps["edge"][1:-1, 1:-1, 1:-1], 16.0)
    assert np.allclose(control_maps(np.ones((6, 6, 6)))["edge"], 0.0)
    r = maps["random"]
    assert r.shape == k.shape and np.array_equal(r, control_maps(k, seed=3)["random"])
    assert not np.array_equal(r, control_maps(k, seed=4)["random"])


def test_body_mask_is_the_largest_part_above_air_with_its_holes_filled():
    window = IntensityWindow(-1000.0, 1000.0)
    hu = np.full((20, 20, 20), -1000.0)
    k, j, i = np.mgrid[0:20, 0:20, 0:20]
    ball = (k - 10) ** 2 + (j - 10) ** 2 + (i - 10) ** 2 < 49
    hu[ball] = 40.0
    hu[(k - 10) ** 2 + (j - 10) ** 2 + (i - 10) ** 2 < 4] = -1000.0  # air inside (bowel gas): still body
    hu[1, 1, 1] = 40.0  # a speck outside: not body
    body = body_region(window.apply(hu), window)
    assert np.array_equal(body, ball)


def test_removal_baseline_is_fat_on_the_card_window():
    window = IntensityWindow(-200.0, 300.0)
    base = removal_baseline(np.zeros((3, 3, 3)), window)
    assert np.allclose(base, window.apply(np.array([-100.0]))[0])
    with pytest.raises(SegXAIError, match="window"):
        removal_baseline(np.zeros((3, 3, 3)), None)


def _parser():
    from SegXAILib import cli_explain

    parser = argparse.ArgumentParser(prog="segxai")
    cli_explain.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_ctrl_c_returns_130_and_writes_nothing(tmp_path, monkeypatch):
    import SegXAILib.explaining as explaining

    tiny_model(tmp_path)
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(oblique_ct(), str(ct))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(explaining, "explain_volume", interrupted)
    out = tmp_path / "out"
    args = _parser().parse_args(["explain", str(ct), "-o", str(out), "--model", str(tmp_path / "tiny")])
    assert args.func(args) == 130
    assert not out.exists() or not any(out.iterdir())
