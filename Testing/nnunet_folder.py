"""Build an nnU-Net v2 trained-model folder at test time, as ``nnUNetv2_train`` lays it out: dataset.json,
plans.json and fold_N/checkpoint_final.pth holding a PlainConvUNet from ``dynamic_network_architectures`` with
random weights, in the checkpoint format nnU-Net writes (numpy scalars included, so the allowlist is exercised)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3}


def architecture(features=(4, 8, 16), conv="torch.nn.modules.conv.Conv3d") -> dict:
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": conv,
            "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans(spacing=(5.0, 4.2, 4.6), patch=(32, 32, 32), transpose=(0, 2, 1), configuration="3d_fullres") -> dict:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_SegXAITest", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [100, 100, 100],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": list(transpose),
        "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [60, 60, 60],
                "spacing": list(spacing), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": architecture(), "batch_dice": False,
            },
            "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                          "spacing": [s * 1.5 for s in spacing], "next_stage": "3d_cascade_fullres"},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
            "2d": {"inherits_from": "3d_fullres", "patch_size": list(patch[1:]), "spacing": list(spacing[1:]),
                   "architecture": architecture(conv="torch.nn.modules.conv.Conv2d")},
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1800.0, "mean": 90.0, "median": 95.0, "min": -1000.0, "percentile_00_5": -160.0,
            "percentile_99_5": 310.0, "std": 75.0}},
    }


def dataset(labels=None) -> dict:
    return {"channel_names": {"0": "CT"}, "labels": dict(labels or LABELS), "numTraining": 4, "file_ending": ".nii.gz"}


def checkpoint(network, plans_dict, dataset_dict, configuration="3d_fullres", fold=0, mirror_axes=(0, 1, 2)) -> dict:
    """What nnU-Net's trainer saves (``nnUNetTrainer.save_checkpoint``), with numpy scalars where it has them."""
    import torch

    return {
        "network_weights": network.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)], "train_losses": [np.float32(0.7)]},
        "_best_ema": np.float64(0.5), "current_epoch": 1000,
        "init_args": {"plans": plans_dict, "configuration": configuration, "fold": fold, "dataset_json": dataset_dict,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": mirror_axes,
    }


def build(root, folds=(0,), plans_dict=None, configuration="3d_fullres", mirror_axes=(0, 1, 2), seed=0,
          labels=None) -> Path:
    """``root/Dataset999_SegXAITest/nnUNetTrainer__nnUNetPlans__<configuration>`` with random-weight folds."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from SegXAILib.models.adapters.nnunet import resolve_configuration
    from SegXAILib.models.adapters.nnunet_network import build_network

    plans_dict = plans_dict or plans()
    data = dataset(labels)
    folder = Path(root) / "Dataset999_SegXAITest" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans_dict, indent=1))
    (folder / "dataset.json").write_text(json.dumps(data, indent=1))
    # the weights of a 3D network (a 2D configuration's folder is only built to be refused)
    arch = resolve_configuration(plans_dict, "3d_fullres" if configuration == "2d" else configuration)["architecture"]
    for f in folds:
        torch.manual_seed(seed + 17 * (int(f) if f != "all" else 99))
        net = build_network(arch, 1, len(data["labels"]))
        assert isinstance(net, PlainConvUNet)
        with torch.no_grad():  # random but not degenerate: spread the output layer's bias a little
            net.decoder.seg_layers[-1].bias.copy_(torch.randn_like(net.decoder.seg_layers[-1].bias) * 0.3)
        (folder / f"fold_{f}").mkdir(exist_ok=True)
        torch.save(checkpoint(net, plans_dict, data, configuration, f, mirror_axes), folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder
