"""Quality scores (energy inside, pointing game, deletion/insertion, randomisation), the curves PNG, and the
``segxai explain`` CLI hook end to end on a tiny model."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegXAILib.errors import SegXAIError
from SegXAILib.quality import auc, deletion_insertion, energy_inside, plot_curves, pointing_game, randomised_copy, spearman
from test_tiling import oblique_ct, tiny_model

torch.set_num_threads(1)


def test_energy_and_pointing_game():
    sal = np.zeros((4, 4, 4), dtype=np.float32)
    region = np.zeros(sal.shape, dtype=bool)
    region[:2] = True
    sal[0, 0, 0], sal[3, 3, 3], sal[1, 1, 1] = 3.0, 1.0, -5.0  # negative saliency is not energy
    assert energy_inside(sal, region) == pytest.approx(0.75)
    assert pointing_game(sal, region) is True
    sal[3, 3, 3] = 4.0
    assert pointing_game(sal, region) is False
    assert np.isnan(energy_inside(np.zeros_like(sal), region))


def test_deletion_and_insertion_reward_a_faithful_map():
    rng = np.random.default_rng(0)
    image = rng.random((6, 6, 6)).astype(np.float32)
    region = np.zeros(image.shape, dtype=bool)
    region[1:4, 1:4, 1:4] = True
    baseline = np.zeros_like(image)

    def score(img):  # the "model": mean intensity in the region
        return float(img[region].mean())

    good = np.where(region, image, -1.0)  # saliency = the true contributions
    bad = -good
    g = deletion_insertion(score, image, baseline, good, steps=10)
    b = deletion_insertion(score, image, baseline, bad, steps=10)
    assert len(g["fractions"]) == 11 and g["deletion"][0] == pytest.approx(score(image)) and g["deletion"][-1] == 0.0
    assert g["insertion"][0] == 0.0 and g["insertion"][-1] == pytest.approx(score(image))
    assert g["deletion_auc"] < b["deletion_auc"] and g["insertion_auc"] > b["insertion_auc"]
    # 27 of 216 voxels carry the whole score: the faithful map deletes it all by the second step
    assert g["deletion"][2] == 0.0 and g["deletion_auc"] < 0.1 * score(image)
    assert auc([0, 1, 1], [0, 0.5, 1]) == pytest.approx(0.75)


def test_spearman_and_randomised_copy():
    a = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    assert spearman(a, a * 2 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.PReLU())
    before = [p.detach().clone() for p in net.parameters()]
    clone = randomised_copy(net, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))  # the original is untouched
    assert not torch.equal(clone[0].weight, net[0].weight)


def test_quality_and_sanity_through_explain_volume(tmp_path):
    from SegXAILib.explaining import explain_volume
    from SegXAILib.volume import Volume

    model = tiny_model(tmp_path)
    volume = Volume.from_sitk(oblique_ct())
    result = explain_volume(volume, model, ["hirescam", "ig"], "liver", "whole", steps=4, device="cpu",
                            quality=True, curve_steps=10, sanity=True)
    for name in ("hirescam", "ig"):
        q = result.methods[name].quality
        assert len(q["curves"]["deletion"]) == 11 and 0 <= q["curves"]["insertion_auc"] <= 1
        assert q["energy_inside"] == pytest.approx(1.0) or np.isnan(q["energy_inside"])  # whole region
        assert -1 <= q["randomisation_spearman"] <= 1 or np.isnan(q["randomisation_spearman"])
    png = plot_curves({n: m.quality["curves"] for n, m in result.methods.items()}, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SegXAIError):
        plot_curves({}, png)
    json.dumps(result.to_json(), allow_nan=True)


def _parser():
    from SegXAILib import cli_explain

    parser = argparse.ArgumentParser(prog="segxai")
    cli_explain.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_writes_maps_report_and_refuses_overwrite(tmp_path, capsys):
    from SegXAILib import cli_explain
    from SegXAILib.volume import read_volume

    tiny_model(tmp_path)
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(oblique_ct(), str(ct))
    out = tmp_path / "out"
    argv = ["explain", str(ct), "-o", str(out), "--methods", "gradcam,ig,lrp", "--target", "right kidney",
            "--region", "whole", "--steps", "4", "--model", str(tmp_path / "tiny"), "--device", "cpu"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    source = read_volume(ct)
    for method in ("gradcam", "ig", "lrp"):
        m = read_volume(out / f"ct_{method}_right-kidney.nrrd")
        assert m.same_geometry(source, atol=1e-4) and m.array.dtype == np.float32
    assert (out / "ct.seg.nrrd").exists() and (out / "ct_labels.nii.gz").exists()
    assert (out / "ct_explain_curves.png").exists()
    report = json.loads((out / "ct_explain.json").read_text())
    assert report["target"]["class"] == "right kidney" and report["layer"] == "model.1"
    assert report["peak_memory"]["max_rss_mib"] > 0
    assert "completeness_error" in report["methods"]["ig"]["checks"]
    assert "conservation_error" in report["methods"]["lrp"]["checks"]
    assert len(report["methods"]["gradcam"]["quality"]["curves"]["deletion"]) == 11
    assert not list(out.glob(".*partial*"))
    with pytest.raises(SegXAIError, match="exists"):
        args.func(_parser().parse_args(argv))
    args = _parser().parse_args(argv + ["--overwrite", "--no-quality", "--methods", "hirescam"])
    assert args.func(args) == 0


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
