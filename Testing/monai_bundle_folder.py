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
