"""explain_volume end to end: scores for every map and for the two controls, warnings, the reference, the CLI."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegXAILib.errors import SegXAIError
from SegXAILib.explaining import explain_volume
from SegXAILib.scoring import beaten_by_controls, reference_mask
from SegXAILib.volume import Volume, read_volume

from test_tiling import oblique_ct, tiny_model

torch.set_num_threads(1)


def test_every_map_and_both_controls_get_the_same_scores_and_the_cascade(tmp_path):
    model = tiny_model(tmp_path)
    volume = Volume.from_sitk(oblique_ct())
    result = explain_volume(volume, model, ["hirescam", "ig", "occlusion"], "liver", "whole", steps=4, device="cpu",
                            quality=True, curve_steps=10, sanity=True, randomisation_groups=2)
    assert set(result.controls) == {"random", "edge"}
    keys = set(result.controls["edge"])
    for name, m in result.methods.items():
        assert keys <= set(m.quality), name  # the same scores as the controls, plus the cascade
        assert len(m.quality["deletion_curve"]) == 11 and len(m.quality["curve_fractions"]) == 11
        assert len(m.quality["randomisation_steps"]) == 2
        assert m.quality["localisation_against"] == "prediction"
    report = result.to_json()
    json.dumps(report, allow_nan=True)
    assert report["localisation_against"] == "prediction" and set(report["controls"]) == {"random", "edge"}
    with pytest.raises(SegXAIError, match="below the minimum"):
        explain_volume(volume, model, ["hirescam"], "liver", "whole", device="cpu", quality=True, curve_steps=5)
    with pytest.raises(SegXAIError, match="score group"):
        explain_volume(volume, model, ["hirescam"], "liver", "whole", device="cpu", quality=True, scores=["nope"])


def test_localisation_is_measured_against_the_reference_when_given(tmp_path):
    model = tiny_model(tmp_path)
    volume = Volume.from_sitk(oblique_ct())
    seg = None
    energy = {}
    halves = np.zeros(volume.shape, dtype=np.uint8)
    halves[:, :, : volume.shape[2] // 2] = 1  # value 1 (the liver's) on one half, 2 on the other
    halves[:, :, volume.shape[2] // 2:] = 2
    for name, labels in (("first", np.where(halves == 1, 1, 0)), ("second", np.where(halves == 2, 1, 0)),
                         ("both", np.ones(volume.shape))):
        result = explain_volume(volume, model, ["hirescam"], "liver", "whole", device="cpu", quality=True,
                                reference=volume.like(labels.astype(np.uint8)), scores=["localisation"], segmentation=seg)
        seg = result.segmentation
        q = result.methods["hirescam"].quality
        assert q["localisation_against"] == "reference" and q["reference_read_as"] == "label value 1"
        energy[name] = q["energy_inside"]
    # the energy is the reference's share of the map: two halves of the input add up to the whole input's share,
    # and differ from each other (the map is not uniform), so the reference really is what is measured against
    assert energy["first"] + energy["second"] == pytest.approx(energy["both"], abs=0.02)
    assert abs(energy["first"] - energy["second"]) > 1e-3
    mixed = explain_volume(volume, model, ["hirescam"], "liver", "whole", device="cpu", quality=True,
                           reference=volume.like(halves), scores=["localisation"], segmentation=seg)
    assert mixed.methods["hirescam"].quality["energy_inside"] == pytest.approx(energy["first"])  # value 1 only
    nowhere = volume.like(np.zeros(volume.shape, dtype=np.uint8))
    with pytest.raises(SegXAIError, match="reference label is empty"):
        explain_volume(volume, model, ["ig"], "liver", "whole", steps=4, device="cpu", quality=True, reference=nowhere)


def test_reference_label_values():
    labels = Volume(np.array([[[0, 1, 2, 2]]], dtype=np.uint8), np.eye(4))
    mask, how = reference_mask(labels, 2, labels.grid)
    assert how == "label value 2" and mask.tolist() == [[[False, False, True, True]]]
    mask, how = reference_mask(labels, 5, labels.grid)  # the class's value is absent: a one-organ mask
    assert how == "non-zero voxels" and mask.tolist() == [[[False, True, True, True]]]


def test_a_method_no_better_than_a_control_is_named():
    controls = {"random": {"energy_inside": 0.1, "deletion_auc_normalised": 0.8},
                "edge": {"energy_inside": 0.4, "deletion_auc_normalised": 0.5}}
    assert beaten_by_controls("hirescam", {"energy_inside": 0.7, "deletion_auc_normalised": 0.2}, controls) == []
    (energy,) = beaten_by_controls("gradcam", {"energy_inside": 0.4, "deletion_auc_normalised": 0.2}, controls)
    assert "edge control" in energy and "gradcam" in energy and "random" not in energy
    (deletion,) = beaten_by_controls("ig", {"energy_inside": 0.9, "deletion_auc_normalised": 0.9}, controls)
    assert "random and the edge control maps do" in deletion  # lower deletion is better: both controls fall faster


def _parser():
    from SegXAILib import cli_explain

    parser = argparse.ArgumentParser(prog="segxai")
    cli_explain.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_writes_maps_report_curves_with_controls_and_refuses_overwrite(tmp_path, capsys):
    tiny_model(tmp_path)
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(oblique_ct(), str(ct))
    reference = tmp_path / "ref.nii.gz"
    source = read_volume(ct)
    ref = np.zeros(source.shape, dtype=np.uint8)
    ref[3:9, 8:18, 8:22] = 1
    sitk.WriteImage(source.like(ref).to_sitk(), str(reference))
    out = tmp_path / "out"
    argv = ["explain", str(ct), "-o", str(out), "--methods", "gradcam,ig,lrp", "--target", "right kidney",
            "--region", "whole", "--steps", "4", "--model", str(tmp_path / "tiny"), "--device", "cpu",
            "--reference", str(reference)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    for method in ("gradcam", "ig", "lrp"):
        m = read_volume(out / f"ct_{method}_right-kidney.nrrd")
        assert m.same_geometry(source, atol=1e-4) and m.array.dtype == np.float32
    assert (out / "ct.seg.nrrd").exists() and (out / "ct_labels.nii.gz").exists()
    assert (out / "ct_explain_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "ct_explain.json").read_text())
    assert report["target"]["class"] == "right kidney" and report["layer"] == "model.1"
    assert report["localisation_against"] == "reference"
    assert report["methods"]["lrp"]["params"]["rule"] == "composite"
    assert "completeness_error" in report["methods"]["ig"]["checks"]
    assert "conservation_error" in report["methods"]["lrp"]["checks"]
    assert len(report["methods"]["gradcam"]["quality"]["deletion_curve"]) == 11
    assert not list(out.glob(".*partial*"))
    with pytest.raises(SegXAIError, match="exists"):
        args.func(_parser().parse_args(argv))
    args = _parser().parse_args(argv + ["--overwrite", "--no-quality", "--methods", "hirescam"])
    assert args.func(args) == 0
