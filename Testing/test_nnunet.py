"""nnU-Net v2 models, checked against nnU-Net itself: its own ``nnUNetPredictor``, preprocessor and export on a real
CT, its own window steps and Gaussian for the explainers' single-graph oracle; its checkpoints never unpickle code.

The model folders are built at test time with ``dynamic_network_architectures`` (``nnunet_folder.py``)."""
from __future__ import annotations

import itertools
import json
import os
import pickle

import numpy as np
import pytest
import torch

import nnunet_folder
from helpers import import_pytorch_grad_cam

nnunetv2 = pytest.importorskip("nnunetv2", reason="could not import nnunetv2 (the oracle)")

from SegXAILib.errors import SegXAIError  # noqa: E402
from SegXAILib.models.store import load_model  # noqa: E402
from SegXAILib.pipeline import segment  # noqa: E402
from SegXAILib.volume import Volume, read_volume  # noqa: E402

CT = "totalseg_example/ct.nii.gz"  # 122 × 101 × 112 at 3 mm, TotalSegmentator's own example


def predictor(folder, mirroring=True):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), use_folds=None)
    return p


def nnunet_predict(folder, path):
    """nnU-Net's own labels and probabilities for the image file at ``path`` (its SimpleITK reader, its predictor)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image, props = SimpleITKIO().read_images([str(path)])
    labels, probabilities = predictor(folder).predict_single_npy_array(image, props, None, None, True)
    return labels, probabilities


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory, data_dir):
    """A 2-fold ensemble with mirroring on all axes, nnU-Net's prediction of the real CT, and ours."""
    plans = nnunet_folder.plans(spacing=(12.0, 11.2, 11.6), patch=(16, 16, 16))  # 27 windows × 8 mirror images × 2 folds
    folder = nnunet_folder.build(tmp_path_factory.mktemp("nnunet"), folds=(0, 1), plans_dict=plans)
    labels, probabilities = nnunet_predict(folder, data_dir / CT)
    model = load_model(folder)
    volume = read_volume(data_dir / CT)
    ours = segment(volume, model, "cpu")
    return folder, model, volume, ours, labels, probabilities


def test_labels_and_probabilities_equal_nnunets_own_prediction(two_folds):
    folder, model, volume, ours, labels, probabilities = two_folds
    assert model.format == "nnunetv2" and model.card.extra["nnunet"]["folds"] == ["fold_0", "fold_1"]
    assert len(np.unique(labels)) >= 3  # a real multi-class prediction, not one class everywhere
    assert ours.labels.shape == volume.shape and np.allclose(ours.labels.ijk_to_ras, volume.ijk_to_ras)
    agreement = float((ours.labels.array == labels).mean())
    assert agreement >= 0.999, agreement
    mine = ours.preprocessed.probabilities_from_logits(ours.logits.numpy())
    assert mine.shape == probabilities.shape
    assert float(np.abs(mine - probabilities).max()) <= 1e-4


def test_oblique_input_is_segmented_as_nnunet_reads_it(two_folds, tmp_path):
    """nnU-Net never reorients: an oblique header changes nothing it computes, and the labels keep the header."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from conftest import rotation

    folder, model, volume, ours, labels, _ = two_folds
    image = volume.to_sitk()
    direction = rotation("z", 20) @ rotation("x", 10) @ np.array(image.GetDirection()).reshape(3, 3)
    image.SetDirection(direction.flatten().tolist())
    oblique_path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(oblique_path))
    read, props = SimpleITKIO().read_images([str(oblique_path)])
    assert np.array_equal(read[0], volume.array.astype(read.dtype))  # what nnU-Net's predictor is given
    assert np.allclose(props["spacing"], volume.spacing[::-1])
    oblique = read_volume(oblique_path)
    result = segment(oblique, model, "cpu")
    assert np.allclose(result.labels.ijk_to_ras, oblique.ijk_to_ras) and not np.allclose(oblique.ijk_to_ras, volume.ijk_to_ras)
    assert float((result.labels.array == labels).mean()) >= 0.999


@pytest.mark.parametrize("spacing,transpose", [((12.0, 3.3, 3.7), (0, 1, 2)), ((3.4, 9.0, 2.9), (2, 0, 1))])
def test_preprocessing_and_export_equal_nnunets_on_anisotropic_grids(data_dir, spacing, transpose):
    """nnU-Net's own DefaultPreprocessor and export on a real CT, with a coarse axis (resampled on its own) and
    a transpose: the network input and the labels/probabilities from the same logits are nnU-Net's."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from SegXAILib.models.adapters.nnunet import class_table, resolve_configuration
    from SegXAILib.models.adapters.nnunet_preprocessing import NnUNetPreprocessing, Normalisation

    plans = nnunet_folder.plans(spacing=spacing, transpose=transpose)
    dataset = nnunet_folder.dataset()
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    image, props = SimpleITKIO().read_images([str(data_dir / CT)])
    theirs, _, props = DefaultPreprocessor().run_case_npy(image, None, props, manager, configuration, dataset)

    resolved = resolve_configuration(plans, "3d_fullres")
    p = plans["foreground_intensity_properties_per_channel"]["0"]
    ours = NnUNetPreprocessing(transpose, spacing, Normalisation("CTNormalization", p["mean"], p["std"],
                                                                 p["percentile_00_5"], p["percentile_99_5"]),
                               resolved["resampling_fn_data_kwargs"], resolved["resampling_fn_probabilities_kwargs"])
    pre = ours(read_volume(data_dir / CT))
    assert pre.image.shape == theirs.shape[1:]
    np.testing.assert_allclose(pre.image, theirs[0], atol=1e-5)

    logits = torch.from_numpy(np.random.default_rng(0).normal(size=(len(class_table(dataset)),) + pre.image.shape)
                              .astype(np.float16))
    labels, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, manager, configuration, manager.get_label_manager(dataset), props, return_probabilities=True)
    assert float((pre.labels_from_logits(logits.float().numpy()).array == labels).mean()) >= 0.999
    assert float(np.abs(pre.probabilities_from_logits(logits.float().numpy()) - probabilities).max()) <= 1e-4


def test_model_grid_geometry_maps_model_voxels_onto_the_input(data_dir):
    """A map that is 1 in one model voxel comes back (linearly) around that voxel's RAS position on the input."""
    plans = nnunet_folder.plans(spacing=(6.0, 5.0, 7.0), transpose=(2, 0, 1))
    from SegXAILib.models.adapters.nnunet import resolve_configuration
    from SegXAILib.models.adapters.nnunet_preprocessing import NnUNetPreprocessing, Normalisation

    r = resolve_configuration(plans, "3d_fullres")
    pre = NnUNetPreprocessing((2, 0, 1), (6.0, 5.0, 7.0), Normalisation("CTNormalization", 0, 1, -1000, 1000),
                              r["resampling_fn_data_kwargs"], r["resampling_fn_probabilities_kwargs"])(read_volume(data_dir / CT))
    spot = np.zeros(pre.image.shape, dtype=np.float32)
    index = tuple(s // 3 for s in spot.shape)
    spot[index] = 1.0
    back = pre.to_source(spot, "linear")
    kji = np.array(np.unravel_index(np.argmax(back.array), back.shape))
    where_input = back.ijk_to_ras @ np.r_[kji[::-1], 1.0]
    where_model = pre.grid.ijk_to_ras @ np.r_[np.array(index)[::-1], 1.0]
    assert np.linalg.norm(where_input[:3] - where_model[:3]) <= 3.0 * np.sqrt(3)  # within one input voxel (3 mm)


# ---- safety: a checkpoint is read as data, never as code ---------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    folder = nnunet_folder.build(tmp_path, folds=(0,))
    marker = tmp_path / "pwned"
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["logging"] = _RunsCode(marker)
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(SegXAIError, match=r"refused to load .*checkpoint_final\.pth.*system"):
        load_model(folder)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the same file really is a code-running pickle
        torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)


def test_real_checkpoint_contents_load_through_the_allowlist(tmp_path):
    folder = nnunet_folder.build(tmp_path, folds=(0,))
    from SegXAILib.models.safe_checkpoint import load_checkpoint

    checkpoint = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert isinstance(checkpoint["_best_ema"], np.floating) and checkpoint["trainer_name"] == "nnUNetTrainer"


# ---- what is not supported says so in one line ---------------------------------------------------------
def _with(tmp_path, edit_plans=None, edit_dataset=None, configuration="3d_fullres"):
    folder = nnunet_folder.build(tmp_path, folds=(0,), configuration=configuration)
    for name, edit in (("plans.json", edit_plans), ("dataset.json", edit_dataset)):
        if edit is not None:
            data = json.loads((folder / name).read_text())
            edit(data)
            (folder / name).write_text(json.dumps(data))
    return folder


def test_unsupported_configurations_get_one_clear_line(tmp_path):
    def regions(d):
        d["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
        d["regions_class_order"] = [1, 2]

    def two_channels(d):
        d["channel_names"] = {"0": "T1", "1": "T2"}

    def other_net(p):
        p["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"

    def zscore(p):
        p["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]

    cases = [
        (dict(edit_dataset=regions), "regions"),
        (dict(edit_dataset=two_channels), "2 input channels"),
        (dict(edit_plans=other_net), "architecture 'os.system' is not supported"),
        (dict(edit_plans=zscore), "normalises its input with ZScoreNormalization"),
    ]
    for n, (kw, message) in enumerate(cases):
        with pytest.raises(SegXAIError, match=message):
            load_model(_with(tmp_path / str(n), **kw))
    # a cascade stage reads the previous stage's segmentation
    from SegXAILib.models.adapters import nnunet as adapter

    cascade = nnunet_folder.build(tmp_path / "cascade", folds=(0,), configuration="3d_cascade_fullres")
    with pytest.raises(SegXAIError, match="cascade stage"):
        adapter.load_nnunet(cascade)
    flat = nnunet_folder.build(tmp_path / "flat", folds=(0,), configuration="2d")
    with pytest.raises(SegXAIError, match="2D"):
        adapter.load_nnunet(flat)
    lowres = adapter.load_nnunet(nnunet_folder.build(tmp_path / "low", folds=(0,), configuration="3d_lowres"))
    assert lowres.card.extra["nnunet"]["configuration"] == "3d_lowres"  # inherits the architecture from 3d_fullres


def test_folder_forms_and_class_names(tmp_path):
    folder = nnunet_folder.build(tmp_path, folds=(0, 1, "all"))
    assert load_model(folder / "fold_all").card.extra["nnunet"]["folds"] == ["fold_all"]  # only when asked for
    assert load_model(folder / "fold_1").card.extra["nnunet"]["folds"] == ["fold_1"]  # one fold alone
    model = load_model(folder.parent)  # the dataset folder with one trained model inside
    assert model.card.extra["nnunet"]["folds"] == ["fold_0", "fold_1"]
    kidney = model.card.class_named("kidney_right")
    assert kidney.terminology["type"][1] == "64033007" and kidney.terminology["typeModifier"][1] == "24028007"
    assert model.card.class_named("liver").snomed_code == "10200004"
    assert "nnU-Net v2" in model.describe() and "fold_0, fold_1" in model.describe()


# ---- the explainers explain nnU-Net's own function (its windows, Gaussian, mirroring and folds) --------------
def one_graph_nnunet(network, image, patch, axes, layer):
    """F's parts in one autograd graph, built from nnU-Net's own window steps and Gaussian: the blended mirrored
    logits, and every evaluation of ``layer`` with its window start and mirror dims."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    plain = network._network if hasattr(network, "_network") else network
    gaussian = compute_gaussian(tuple(patch), sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float16,
                                device=torch.device("cpu")).float()
    steps = compute_steps_for_sliding_window(image.shape, patch, 0.5)
    x = image if torch.is_tensor(image) else torch.from_numpy(image)
    captured = []
    module = dict(plain.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    flips = [()] + [c for i in range(len(axes)) for c in itertools.combinations([a + 2 for a in axes], i + 1)]
    total, weight, where = 0, torch.zeros(tuple(image.shape)), []
    try:
        for sx in steps[0]:
            for sy in steps[1]:
                for sz in steps[2]:
                    win = (slice(sx, sx + patch[0]), slice(sy, sy + patch[1]), slice(sz, sz + patch[2]))
                    xw = x[win][None, None]
                    out = 0
                    for dims in flips:
                        out = out + (torch.flip(plain(torch.flip(xw, dims)), dims) if dims else plain(xw))
                        where.append((win, dims))
                    out = out / len(flips)
                    total = total + torch.nn.functional.pad(out[0] * gaussian, _pads(win, image.shape))
                    weight[win] += gaussian
    finally:
        handle.remove()
    return total / weight, captured, where


def _pads(win, shape):
    pads = []
    for s, n in zip(reversed(win), reversed(shape)):
        pads += [s.start, n - s.stop]
    return pads


@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
def test_mirrored_cams_equal_the_single_graph_cam_on_nnunets_windows(tmp_path, method):
    import torch.nn.functional as F

    from SegXAILib.explainers import make_explainer
    from SegXAILib.explainers.tiling import explain_tiled

    cams = import_pytorch_grad_cam()
    plans = nnunet_folder.plans(spacing=(7.0, 6.2, 6.6), patch=(8, 8, 8), transpose=(0, 1, 2))
    model = load_model(nnunet_folder.build(tmp_path, folds=(0,), plans_dict=plans, mirror_axes=(0, 2)))
    net, layer, patch = model.network, "decoder.stages.0", (8, 8, 8)
    image = np.random.default_rng(1).normal(size=(13, 11, 12)).astype(np.float32)
    region = np.zeros(image.shape, dtype=bool)
    region[3:10, 2:9, 3:10] = True
    with torch.enable_grad():
        blended, acts, where = one_graph_nnunet(net, image, patch, (0, 2), layer)
        score = (blended[2] * torch.from_numpy(region)).sum()
        grads = torch.autograd.grad(score, acts)
    assert len(acts) == 3 * 2 * 2 * 4  # 12 overlapping windows × 4 mirror images
    # every evaluation's activation and gradient, flipped back onto the window's own orientation
    a = [torch.flip(t, d)[0].detach().double().numpy() if d else t[0].detach().double().numpy() for t, (_, d) in zip(acts, where)]
    g = [torch.flip(t, d)[0].double().numpy() if d else t[0].double().numpy() for t, (_, d) in zip(grads, where)]
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    gaussian = compute_gaussian(patch, 1. / 8, 10, torch.float16, torch.device("cpu")).double().numpy()
    norm = np.zeros(image.shape)
    for win, dims in where:
        if not dims:
            norm[win] += gaussian
    if method == "hirescam":  # Σ over every evaluation of Σ_k g ⊙ A (pytorch-grad-cam's HiResCAM image, no ReLU)
        per = [cams.HiResCAM.get_cam_image(None, None, None, None, ai[None], gi[None], False)[0] for ai, gi in zip(a, g)]
    else:  # the layer of the function is every evaluation's channels (4 mirror images × C), each channel's weight
        # pooled over all windows (pytorch-grad-cam's Grad-CAM weights of the whole layer), blended as the logits
        whole_a = np.concatenate([np.concatenate(a[k::4], axis=1) for k in range(4)], axis=0)[None]
        whole_g = np.concatenate([np.concatenate(g[k::4], axis=1) for k in range(4)], axis=0)[None]
        w = cams.GradCAM.get_cam_weights(None, None, None, None, whole_a, whole_g)[0].reshape(4, -1)
        per = [np.einsum("c,cdhw->dhw", w[n % 4], ai) for n, ai in enumerate(a)]
    out = np.zeros(image.shape)
    for m, (win, dims) in zip(per, where):
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(m))[None, None], size=patch, mode="trilinear",
                           align_corners=False)[0, 0].numpy()
        out[win] += up if method == "hirescam" else up * gaussian / norm[win]
    oracle = np.maximum(out, 0)
    ours, totals = explain_tiled(make_explainer(method, layer=layer), net, image, 2, region, patch,
                                 windowing=model.windowing)
    assert oracle.max() > 0 and (oracle == 0).any()
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-5 * oracle.max())
    assert totals["score"] == pytest.approx(float(score.detach()), rel=1e-4)


def test_tiled_ig_equals_captums_ig_of_nnunets_function(tmp_path):
    """captum's IG of F built in one graph from nnU-Net's own windows, Gaussian and mirroring: same map."""
    from captum.attr import IntegratedGradients as CaptumIG

    from SegXAILib.explainers import make_explainer
    from SegXAILib.explainers.ig import make_baseline
    from SegXAILib.explainers.tiling import explain_tiled

    plans = nnunet_folder.plans(spacing=(7.0, 6.2, 6.6), patch=(8, 8, 8), transpose=(0, 1, 2))
    model = load_model(nnunet_folder.build(tmp_path, folds=(0,), plans_dict=plans, mirror_axes=(1,)))
    image = np.random.default_rng(2).normal(size=(13, 12, 11)).astype(np.float32)
    baseline = make_baseline(image, "blur", blur_sigma=2.0)
    region = np.zeros(image.shape, dtype=bool)
    region[2:9, 3:10, 2:8] = True
    mask = torch.from_numpy(region)

    def F(batch):
        return torch.stack([(one_graph_nnunet(model.network, x, (8, 8, 8), (1,), "decoder.stages.0")[0][1] * mask).sum()
                            for x in batch])

    with torch.enable_grad():
        oracle = CaptumIG(F).attribute(torch.from_numpy(image)[None], torch.from_numpy(baseline)[None], n_steps=4,
                                       method="gausslegendre", internal_batch_size=1)[0].detach().numpy()
    ours, totals = explain_tiled(make_explainer("ig", steps=4), model.network, image, 1, region, (8, 8, 8),
                                 baseline=baseline, windowing=model.windowing)
    np.testing.assert_allclose(ours, oracle, rtol=1e-3, atol=1e-5 * np.abs(oracle).max())
    with torch.no_grad():  # the totals' end scores are nnU-Net's function too
        delta = float(F(torch.from_numpy(image)[None]) - F(torch.from_numpy(baseline)[None]))
    assert totals["score"] - totals["baseline_score"] == pytest.approx(delta, rel=1e-4)


def test_every_method_explains_an_nnunet_model_onto_the_input_grid(tmp_path, data_dir):
    from SegXAILib.explaining import explain_volume

    plans = nnunet_folder.plans(spacing=(20.0, 19.0, 19.5), patch=(8, 8, 8))  # 36 windows of 8³
    model = load_model(nnunet_folder.build(tmp_path, folds=(0,), plans_dict=plans, mirror_axes=(1,)))
    volume = read_volume(data_dir / CT)
    centre = volume.ijk_to_ras @ np.r_[(np.array(volume.shape[::-1]) - 1) / 2, 1.0]
    region = "point:" + ",".join(f"{c:.1f}" for c in centre[:3]) + ":45"  # a 45 mm ball: occlusion stays cheap
    result = explain_volume(volume, model, ["hirescam", "gradcampp", "ig", "lrp", "occlusion"], target="spleen",
                            region=region, steps=4, device="cpu", occlusion_mm=40.0)
    assert result.layer == "decoder.stages.0"  # the decoder stage below full resolution, by default
    for m in result.maps:
        assert isinstance(m.map, Volume) and m.map.shape == volume.shape
        assert np.allclose(m.map.ijk_to_ras, volume.ijk_to_ras)
        assert np.isfinite(m.map.array).all() and np.abs(m.map.array).max() > 0
    # IG's quadrature at 4 steps is coarse on a random network (the tiled IG equals captum's: test above); LRP's
    # conservation through instance norm, LeakyReLU and concatenated skips is reported
    assert np.isfinite(result.methods["ig"].checks["completeness_error"])
    assert np.isfinite(result.methods["lrp"].checks["conservation_error"])


def test_cli_explains_an_nnunet_folder_and_says_what_it_recognised(tmp_path, data_dir, capsys):
    import SimpleITK as sitk

    from SegXAILib.cli import main

    plans = nnunet_folder.plans(spacing=(20.0, 19.0, 19.5), patch=(8, 8, 8))
    folder = nnunet_folder.build(tmp_path / "model", folds=(0,), plans_dict=plans, mirror_axes=None)
    code = main(["explain", str(data_dir / CT), "--model", str(folder), "-o", str(tmp_path / "out"),
                 "--methods", "hirescam", "--target", "liver", "--no-quality", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "nnU-Net v2 model" in err and "configuration 3d_fullres" in err and "no mirroring" in err
    written = sitk.ReadImage(str(tmp_path / "out" / "ct_hirescam_liver.nrrd"))
    source = sitk.ReadImage(str(data_dir / CT))
    assert written.GetSize() == source.GetSize()
    assert np.allclose(written.GetOrigin(), source.GetOrigin()) and np.allclose(written.GetDirection(), source.GetDirection())
