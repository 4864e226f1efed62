"""MONAI bundles: SegXAI's bundled U-Net exported as a bundle, run by MONAI's own components (the oracle) and loaded
and run by SegXAI; explanations on the input grid; configs that would run code refused without running it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_bundle_folder import crop_ct, hostile_bundle, run_with_monai
from SegXAILib.errors import SegXAIError

MODEL = "segxai-resunet-3mm"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from SegXAILib.export_bundle import export_monai_bundle
    from SegXAILib.models.store import bundled_models, load_model

    if MODEL not in bundled_models():
        pytest.skip(f"the bundled model {MODEL} is not in Resources/Models")
    return export_monai_bundle(load_model(MODEL), tmp_path_factory.mktemp("export") / "bundle")


@pytest.fixture(scope="module")
def small_ct(data_dir, tmp_path_factory) -> Path:
    """The real CT cut to 64 × 80 × 122 voxels: two 96³ windows that blend along i (the whole CT: see the report)."""
    return crop_ct(data_dir / "totalseg_example" / "ct.nii.gz", tmp_path_factory.mktemp("ct") / "ct.nii.gz",
                   (slice(20, 84), slice(10, 90), slice(None)))


@pytest.fixture(scope="module")
def oblique_ct(data_dir, tmp_path_factory) -> Path:
    """The real CT cut to 64 × 80 × 122, with a rotated direction matrix and anisotropic spacing (Spacingd resamples
    and Invertd resamples back). The spacing avoids a MONAI knife edge: Spacingd's shape is round(extent / pixdim
    + 1), and 63 · 3.5 / 3 + 1 = 74.5 flips between 74 and 75 on a 1e-7 change of the header (see the report)."""
    from conftest import rotation

    direction = rotation("z", 17) @ rotation("x", -11) @ rotation("y", 6)
    target = tmp_path_factory.mktemp("oblique") / "ct_oblique.nii.gz"
    return crop_ct(data_dir / "totalseg_example" / "ct.nii.gz", target, (slice(20, 84), slice(10, 90), slice(None)),
                   spacing=(2.5, 3.0, 3.25), direction=direction)


def test_export_writes_a_plain_bundle(bundle):
    from SegXAILib.models.store import load_model

    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"] == "monai.networks.nets.UNet"
    assert config["inferer"]["mode"] == "gaussian" and config["inferer"]["roi_size"] == [96, 96, 96]
    assert any(t["_target_"] == "Invertd" for t in config["postprocessing"]["transforms"])
    state = torch.load(str(bundle / "models" / "model.pt"), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = load_model(bundle)
    assert model.format == "monai-bundle" and model.describe().startswith("MONAI bundle")
    assert [c.name for c in model.card.foreground][:2] == ["liver", "liver tumor"]
    assert model.preprocessing.window.value_of(-1000) == 0.0 and model.preprocessing.window.value_of(50) == 0.5
    assert model.card.explanation["default_layer"] == "model.1.submodule.2"


def test_export_refuses_the_transunet_and_an_existing_folder(bundle, tmp_path):
    from dataclasses import replace

    from SegXAILib.export_bundle import export_monai_bundle
    from SegXAILib.models.store import LoadedModel, load_model

    model = load_model(MODEL)
    transunet = LoadedModel(model.network, replace(model.card, architecture="transunet3d"), model.folder)
    with pytest.raises(SegXAIError, match="only the residual U-Net"):
        export_monai_bundle(transunet, tmp_path / "t")
    with pytest.raises(SegXAIError, match="--overwrite"):
        export_monai_bundle(model, bundle)


@pytest.mark.parametrize("case", ["straight", "oblique"])
def test_segxai_runs_the_bundle_as_monai_does(bundle, small_ct, oblique_ct, tmp_path, case):
    from SegXAILib.models.store import load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.volume import read_volume

    image = small_ct if case == "straight" else oblique_ct
    oracle = run_with_monai(bundle, image, tmp_path / "monai")
    expected = read_volume(oracle["labels"])
    volume = read_volume(image)
    result = segment(volume, load_model(bundle), "cpu")
    assert result.labels.same_geometry(volume) and expected.same_geometry(volume, atol=1e-5)
    agreement = float(np.mean(result.labels.array == expected.array))
    assert agreement >= 0.999, agreement
    assert np.count_nonzero(result.labels.array == 1) > 1000  # the liver is there, not an empty agreement
    probabilities = result.preprocessed.probabilities_from_logits(result.logits)
    assert np.abs(probabilities - oracle["probabilities"].transpose(0, 3, 2, 1)).max() < 1e-4


def test_explain_a_bundle_on_the_input_grid(bundle, oblique_ct, tmp_path):
    from SegXAILib.cli import main
    from SegXAILib.volume import read_volume

    small = crop_ct(oblique_ct, tmp_path / "ct_small.nii.gz", (slice(0, 60), slice(8, 72), slice(20, 100)))  # 1 window
    out = tmp_path / "explain"
    methods = ("hirescam", "gradcam", "gradcampp", "ig", "lrp", "occlusion")  # every explainer, on the bundle
    assert main(["explain", str(small), "--model", str(bundle), "-o", str(out), "--methods", ",".join(methods),
                 "--steps", "2", "--no-quality", "--device", "cpu", "--occlusion-mm", "100"]) == 0
    volume = read_volume(small)
    report = json.loads((out / "ct_small_explain.json").read_text())
    for method in methods:
        found = read_volume(out / f"ct_small_{method}_liver.nrrd")
        assert found.same_geometry(volume, atol=1e-4)
        # a map may be empty only where the run says so (Grad-CAM at this U-Net layer: all channel weights < 0)
        assert np.abs(found.array).max() > 0 or report["methods"][method]["warnings"], method


# ---- safety -------------------------------------------------------------------------------------------------------
def _marker_command(marker: Path) -> str:
    return f"touch {marker}"


@pytest.mark.parametrize("key, value, names", [
    ("network_def", {"_target_": "os.system", "command": "CMD"}, "os.system"),
    ("inferer#sw_batch_size", "$__import__('os').system('CMD')", "__import__"),
    ("preprocessing#transforms#0#reader", "subprocess.getoutput", "reader"),
    ("network_def#_target_", "monai.bundle.scripts.run", "monai.bundle.scripts.run"),
    ("postprocessing#transforms#0#other", "$torch.hub.load('x', 'y')", "torch.hub.load"),
    ("network_def#_target_", "monai.networks.utils.save_state", "save_state"),
    ("preprocessing#transforms#0", {"_target_": "Lambdad", "keys": "image", "func": "$os.system"}, "os.system"),
    ("network_def#pretrained_url", "http://127.0.0.1:9/weights.pth", "fetch"),  # weights from elsewhere at build time
])
def test_code_in_a_config_is_refused_and_not_run(bundle, tmp_path, key, value, names):
    from SegXAILib.models.store import load_model

    marker = tmp_path / "ran"
    value = json.loads(json.dumps(value).replace("CMD", _marker_command(marker)))
    hostile = hostile_bundle(bundle, tmp_path / "hostile", key, value)
    with pytest.raises(SegXAIError) as err:
        load_model(hostile)
    message = str(err.value)
    assert "\n" not in message and "refused" in message and names in message and key.split("#")[0] in message
    assert not marker.exists()


def test_only_what_segxai_needs_is_parsed(bundle, tmp_path):
    """Entries no SegXAI component references (run, initialize) are never evaluated; one that is referenced is."""
    from SegXAILib.models.store import load_model

    marker = tmp_path / "ran"
    evil = f"$__import__('os').system('{_marker_command(marker)}')"
    quiet = hostile_bundle(bundle, tmp_path / "quiet", "initialize", [evil])
    assert load_model(quiet).format == "monai-bundle"
    loud = hostile_bundle(bundle, tmp_path / "loud", "evil", evil)
    config_path = loud / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["inferer"]["sw_batch_size"] = "@evil"
    config_path.write_text(json.dumps(config))
    with pytest.raises(SegXAIError, match="evil"):
        load_model(loud)
    assert not marker.exists()


def test_expression_allowlist():
    from SegXAILib.models.adapters.monai_bundle_safety import check_expression

    for fine in ["$@network_def.to(@device)", "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
                 "$@bundle_root + '/models/model.pt'", "$os.path.join(@bundle_root, 'eval')", "$numpy.uint8",
                 "$int(96 * 2)", "$[96, 96, 96]"]:
        check_expression("k", fine)
    for bad in ["$import os", "$__import__('os')", "$torch.load('m.pt')", "$monai.utils.optional_import('os')[0]",
                "$(lambda: 1)()", "$[i for i in @datalist]", "$getattr(torch, 'load')", "$@net.__class__",
                "$open('x').read()", "$eval('1')", "$@x.load_state_dict(@y)", "$os.system", "$torch.load", "$torch",
                "$int", "$monai.bundle.run"]:
        with pytest.raises(SegXAIError, match="refused"):
            check_expression("k", bad)


def test_trust_model_lets_a_checked_out_config_through(bundle, tmp_path):
    from SegXAILib.models.adapters.monai_bundle import load_bundle

    odd = hostile_bundle(bundle, tmp_path / "odd", "inferer#sw_batch_size", "$sum([1, 1])")
    with pytest.raises(SegXAIError, match="sum"):
        load_bundle(odd)
    assert load_bundle(odd, trust_model=True).card.extra["monai_bundle"]["trusted"] is True


def test_cli_trust_model_flag(bundle, small_ct, tmp_path, capsys):
    """Without --trust-model the CLI refuses an unchecked expression in one line; with it, the bundle runs."""
    from SegXAILib.cli import main

    odd = hostile_bundle(bundle, tmp_path / "odd", "inferer#sw_batch_size", "$sum([1, 1])")
    assert main(["segment", str(small_ct), "--model", str(odd), "-o", str(tmp_path / "a"), "--device", "cpu"]) == 1
    assert "refused" in capsys.readouterr().err
    assert main(["segment", str(small_ct), "--model", str(odd), "-o", str(tmp_path / "b"), "--device", "cpu",
                 "--trust-model"]) == 0


def test_pickled_code_in_model_pt_is_refused(bundle, tmp_path):
    from SegXAILib.models.store import load_model

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (_marker_command(marker),)

    copy = tmp_path / "pickled"
    shutil.copytree(bundle, copy)
    torch.save({"model": Payload()}, str(copy / "models" / "model.pt"))
    with pytest.raises(SegXAIError, match="refused to load"):
        load_model(copy)
    assert not marker.exists()


def test_yaml_config_and_unsupported_inferer(bundle, tmp_path):
    import yaml

    from SegXAILib.models.store import load_model

    as_yaml = tmp_path / "yaml"
    shutil.copytree(bundle, as_yaml)
    config = json.loads((as_yaml / "configs" / "inference.json").read_text())
    (as_yaml / "configs" / "inference.json").unlink()
    (as_yaml / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    assert load_model(as_yaml).format == "monai-bundle"
    simple = hostile_bundle(bundle, tmp_path / "simple", "inferer", {"_target_": "SimpleInferer"})
    with pytest.raises(SegXAIError, match="SlidingWindowInferer"):
        load_model(simple)


@pytest.mark.parametrize("mode, sigma", [("constant", 0.125), ("gaussian", 0.25)])
def test_bundle_windowing_matches_monai_inferer(mode, sigma):
    from monai.inferers import SlidingWindowInferer

    from SegXAILib.bundle_windowing import BundleWindowing

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    image = np.random.default_rng(0).normal(size=(20, 27, 23)).astype(np.float32)
    windowing = BundleWindowing((16, 16, 16), 0.25, mode, sigma)
    ours = windowing.logits(net, image)
    with torch.no_grad():
        theirs = SlidingWindowInferer((16, 16, 16), 2, 0.25, mode=mode, sigma_scale=sigma)(
            torch.from_numpy(image)[None, None], net)[0]
    assert torch.allclose(ours, torch.as_tensor(theirs), atol=1e-5)
    assert windowing.importance().shape == (16, 16, 16)


def test_a_model_zoo_style_bundle_matches_monai(small_ct, tmp_path):
    """A bundle as the model zoo writes them (RAS, constant blend by default, $ paths, handlers, evaluator) loads
    without trust and runs as MONAI runs it; the unreferenced imports/datalist/initialize are never evaluated."""
    from monai_bundle_folder import third_party_bundle

    from SegXAILib.bundle_windowing import BundleWindowing
    from SegXAILib.models.store import load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.volume import read_volume

    bundle = third_party_bundle(tmp_path / "spleen")
    model = load_model(bundle)
    assert isinstance(model.windowing, BundleWindowing) and model.windowing.mode == "constant"
    assert [c.name for c in model.card.classes] == ["background", "spleen"]
    oracle = run_with_monai(bundle, small_ct, tmp_path / "monai")
    volume = read_volume(small_ct)
    result = segment(volume, model, "cpu")
    expected = read_volume(oracle["labels"])
    assert result.labels.same_geometry(volume)
    assert float(np.mean(result.labels.array == expected.array)) >= 0.999
    probabilities = result.preprocessed.probabilities_from_logits(result.logits)
    assert np.abs(probabilities - oracle["probabilities"].transpose(0, 3, 2, 1)).max() < 1e-4


def test_monai_bundle_run_itself_agrees(bundle, oblique_ct, tmp_path):
    """``python -m monai.bundle run`` on the exported bundle, unchanged (needs pytorch-ignite for its evaluator)."""
    import subprocess
    import sys

    pytest.importorskip("ignite", reason="monai.bundle run's SupervisedEvaluator needs pytorch-ignite")
    from SegXAILib.models.store import load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.volume import read_volume

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(oblique_ct, data / oblique_ct.name)
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--meta_file",
                           str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle), "--dataset_dir",
                           str(data), "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = read_volume(tmp_path / "out" / oblique_ct.name.replace(".nii.gz", "_seg.nii.gz"))
    volume = read_volume(oblique_ct)
    result = segment(volume, load_model(bundle), "cpu")
    assert expected.same_geometry(volume, atol=1e-5)
    assert float(np.mean(result.labels.array == expected.array)) >= 0.999
