"""MONAI bundles for the tests: small CT inputs (cropped, oblique), hostile configs, and the oracle: the bundle's own
components built by MONAI's ConfigParser from the whole config and run as its ``SupervisedEvaluator`` runs them
(data loader → inferer → decollated postprocessing; ``monai.bundle run`` itself needs pytorch-ignite)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def crop_ct(source: Path, target: Path, box=(slice(None), slice(None), slice(None)), spacing=None, direction=None):
    """A NIfTI of ``source`` cropped to ``box`` (k, j, i), optionally with another spacing and direction matrix."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)[box]
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(spacing or image.GetSpacing())
    out.SetDirection(np.asarray(direction if direction is not None else image.GetDirection(), float).ravel().tolist())
    out.SetOrigin(image.GetOrigin())
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(target))
    return target


def run_with_monai(bundle: Path, image: Path, output_dir: Path) -> dict:
    """Run the bundle's inference config on one image with MONAI only; returns 'labels' (the file SaveImaged wrote)
    and 'probabilities' (C, i, j, k) as the postprocessing had them right after its Invertd."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch
    from monai.transforms import AsDiscreted

    dataset_dir = output_dir / "input"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(image, dataset_dir / image.name)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["dataset_dir"] = str(dataset_dir)
    parser["output_dir"] = str(output_dir)
    parser["device"] = "$torch.device('cpu')"
    parser["dataloader#num_workers"] = 0
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(str(bundle / "models" / "model.pt"), weights_only=True))
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    probabilities = None
    for batch in parser.get_parsed_content("dataloader"):
        with torch.no_grad():
            batch["pred"] = inferer(batch["image"], network)
        for item in decollate_batch(batch):
            for t in post.transforms:
                if isinstance(t, AsDiscreted):
                    probabilities = item["pred"].detach().cpu().numpy()
                item = t(item)
    stem = image.name.split(".")[0]
    return {"labels": output_dir / f"{stem}_seg.nii.gz", "probabilities": probabilities}


def hostile_bundle(bundle: Path, target: Path, key: str, value) -> Path:
    """A copy of ``bundle`` whose inference.json has ``value`` at ``key`` ('a#b#0' addresses nested entries)."""
    shutil.copytree(bundle, target)
    path = target / "configs" / "inference.json"
    config = json.loads(path.read_text())
    *parents, last = key.split("#")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    path.write_text(json.dumps(config, indent=2))
    return target


def third_party_bundle(target: Path, seed: int = 0) -> Path:
    """A bundle laid out as MONAI's model-zoo CT bundles are (imports, glob datalist, ``$`` device and paths,
    CheckpointLoader handler, evaluator, RAS orientation, the inferer's default constant blend and overlap), with
    a small random-weight UNet so that it runs in seconds."""
    import torch
    from monai.networks.nets import UNet

    network = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
               "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [6.0, 6.0, 5.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
             "clip": True},
            {"_target_": "EnsureTyped", "keys": "image", "device": "@device"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 4},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "resample": False, "separate_folder": False}]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}, {"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
        "run": ["$@evaluator.run()"],
    }
    metadata = {"version": "0.0.1", "name": "Spleen-like test bundle", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}}}
    (target / "configs").mkdir(parents=True)
    (target / "models").mkdir()
    (target / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (target / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(seed)
    args = {k: v for k, v in network.items() if k != "_target_"}
    net = UNet(**args)
    with torch.no_grad():  # a bias towards 'spleen' on bright voxels, so both classes appear
        for p in net.parameters():
            p.mul_(3.0)
    torch.save(net.state_dict(), str(target / "models" / "model.pt"))
    return target
