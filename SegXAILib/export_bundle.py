"""``segxai export MODEL --format monai-bundle``: a SegXAI residual U-Net written as a MONAI bundle that
``python -m monai.bundle run`` runs unchanged (and that SegXAI loads back as a bundle).

The bundle reproduces the card with MONAI transforms: ``Orientationd`` to the card's axes and ``Spacingd`` to its
spacing (both in MONAI's array order, which is SegXAI's [k, j, i], so the network sees the arrays it was trained
on), ``ScaleIntensityRanged`` of the HU window to [0, 1], MONAI's Gaussian ``SlidingWindowInferer`` with the card's
patch and overlap, and ``Invertd`` back to the input grid. Not reproduced: SegXAI's anti-aliasing before
shrinking, its air (-1024 HU) outside the field of view, and the card's post-processing (largest components).
The TransUNet is SegXAI's own class, which MONAI cannot build from a config alone, so its export is refused.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

from .errors import SegXAIError

FORMATS = ("monai-bundle",)


def network_def(card) -> dict:
    """MONAI's ``UNet`` with the arguments `models.unet.residual_unet` gives it for this card."""
    from .models.unet import residual_unet

    defaults = {k: p.default for k, p in inspect.signature(residual_unet).parameters.items()
                if p.default is not inspect.Parameter.empty}
    args = {**defaults, **card.arch_args, "in_channels": 1, "out_channels": card.num_classes}
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1,
            "out_channels": card.num_classes, "channels": list(args["channels"]), "strides": list(args["strides"]),
            "num_res_units": int(args["num_res_units"]), "norm": args["norm"], "dropout": float(args["dropout"])}


def inference_config(card) -> dict:
    """The bundle's configs/inference.json (see module docstring)."""
    low, high = (float(w) for w in card.window)
    image = {"keys": "image"}
    preprocessing = [
        {"_target_": "LoadImaged", **image, "image_only": True},
        {"_target_": "EnsureChannelFirstd", **image},
        {"_target_": "Orientationd", **image, "axcodes": card.orientation.upper()[::-1]},
        {"_target_": "Spacingd", **image, "pixdim": [float(s) for s in card.spacing][::-1], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", **image, "a_min": low, "a_max": high, "b_min": 0.0, "b_max": 1.0,
         "clip": True},
        {"_target_": "EnsureTyped", **image},
    ]
    postprocessing = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False},
    ]
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(card),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(p) for p in card.patch], "sw_batch_size": 2,
                    "overlap": float(card.overlap), "mode": "gaussian", "sigma_scale": 0.125},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}, "map_location": "@device"}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": [],
        "run": ["$@evaluator.run()"],
    }


def metadata(card) -> dict:
    """The bundle's configs/metadata.json: MONAI's fields plus SegXAI's classes and explanation defaults."""
    import monai
    import numpy
    import torch

    channels = {str(c.value): c.name for c in card.classes}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported from the SegXAI model {card.name}"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__, "required_packages_version": {"nibabel": "*"},
        "name": card.name, "task": "CT segmentation", "description": card.description,
        "authors": "SegXAI export", "copyright": "see the SegXAI model card",
        "intended_use": card.intended_use,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": list(card.patch), "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": card.num_classes,
                                 "spatial_shape": list(card.patch), "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": channels}},
        },
        "segxai": {"model": card.name, "classes": [c.to_json() for c in card.classes],
                   "explanation": card.explanation, "limitations": list(card.limitations),
                   "not_in_bundle": "SegXAI's anti-aliasing before shrinking, air outside the field of view, and "
                                    f"the card's post-processing {json.dumps(card.postprocessing)}"},
    }


def state_dict(model, definition: dict) -> dict:
    """The network's weights as plain CPU tensors, checked to load strictly into MONAI's UNet built from
    ``definition``, so the bundle is known to run before it is written."""
    from monai.networks.nets import UNet

    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.network.state_dict().items()}
    args = {k: v for k, v in definition.items() if k != "_target_"}
    try:
        UNet(**args).load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:160]
        raise SegXAIError(f"the weights of {model.card.name} do not fit MONAI's UNet ({detail})") from None
    return state


def export_monai_bundle(model, output: "str | os.PathLike", overwrite: bool = False) -> Path:
    """Write ``model`` (a SegXAI residual U-Net) as a MONAI bundle folder at ``output``; returns the folder."""
    import torch

    card = model.card
    if getattr(model, "format", "segxai") != "segxai":
        raise SegXAIError(f"{card.name} is a {model.format} model, not a SegXAI model; only SegXAI's own models export")
    if card.architecture != "residual_unet":
        raise SegXAIError(f"{card.name} is a {card.architecture}; MONAI cannot build SegXAI's own networks from a "
                          "config alone, so only the residual U-Net (MONAI's UNet) exports as a MONAI bundle")
    output = Path(output)
    if output.exists():
        if not overwrite:
            raise SegXAIError(f"{output} exists; pass --overwrite to replace it, or choose another output folder")
        if not (output / "configs" / "metadata.json").is_file() and any(output.iterdir()):
            raise SegXAIError(f"{output} is a folder that is not a MONAI bundle; refusing to replace it")
    definition = network_def(card)
    weights = state_dict(model, definition)
    tmp = output.with_name(f".{output.name}.partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "configs").mkdir(parents=True)
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(card), indent=2) + "\n")
        (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata(card), indent=2) + "\n")
        torch.save(weights, str(tmp / "models" / "model.pt"))
        (tmp / "docs" / "README.md").write_text(
            f"# {card.name} (exported by SegXAI)\n\n{card.description}\n\n{card.intended_use}\n\n"
            "Run: `python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
            "--dataset_dir DIR_OF_NIFTI_CTS`\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
