"""nnU-Net v2's network as its predictor runs it: the architecture named in the plans (allowlisted, built with
``dynamic_network_architectures``), test-time mirroring, and the mean over folds.

The plans name Python classes as strings; only the architectures and layer types listed here are accepted,
so a plans file cannot make SegXAI import anything else. In-place activations are switched off (same values)
so that gradients and forward hooks see every layer's own output.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from ...errors import SegXAIError

#: the architectures nnU-Net v2 plans name, by their plans string
ARCHITECTURES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "ResidualEncoderUNet",
}


def _layer_types() -> dict:
    """Plans strings of layer types → torch classes (3D only)."""
    types = {}
    for cls in (nn.Conv3d, nn.InstanceNorm3d, nn.BatchNorm3d, nn.LeakyReLU, nn.ReLU, nn.GELU, nn.Dropout3d, nn.Dropout):
        for path in (f"torch.nn.{cls.__name__}", f"{cls.__module__}.{cls.__name__}"):
            types[path] = cls
    return types


def build_network(architecture: dict, input_channels: int, output_channels: int) -> nn.Module:
    """The untrained network of a plans ``architecture`` entry (no deep supervision, as for inference)."""
    name = architecture.get("network_class_name", "")
    if name not in ARCHITECTURES and name.split(".")[-1] not in ARCHITECTURES.values():
        raise SegXAIError(f"nnU-Net architecture {name!r} is not supported; supported: "
                          f"{', '.join(sorted(ARCHITECTURES.values()))}")
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise SegXAIError("an nnU-Net model needs the package dynamic_network_architectures (nnU-Net's own networks): "
                          "pip install --no-deps dynamic_network_architectures==0.4.4") from None
    kwargs = dict(architecture.get("arch_kwargs") or {})
    types = _layer_types()
    for key in architecture.get("_kw_requires_import") or []:
        value = kwargs.get(key)
        if value is None:
            continue
        if value not in types:
            if "2d" in str(value).lower():
                raise SegXAIError(f"this nnU-Net configuration is 2D ({value}); SegXAI explains 3D configurations "
                                  "(3d_fullres, 3d_lowres): pick one of those")
            raise SegXAIError(f"nnU-Net plans name the layer type {value!r} for {key}, which SegXAI does not accept; "
                              f"accepted: {', '.join(sorted(set(c.__name__ for c in types.values())))}")
        kwargs[key] = types[value]
    network = getattr(unet, ARCHITECTURES.get(name, name.split(".")[-1]))(
        input_channels=input_channels, num_classes=output_channels, deep_supervision=False, **kwargs)
    for module in network.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return network


def mirror_combinations(axes) -> list:
    """Every non-empty combination of the mirror axes, in nnU-Net's order, as tensor dims of a (B, C, …) batch."""
    dims = [int(a) + 2 for a in axes]
    return [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]


class MirroredNetwork(nn.Module):
    """The mean of the network's output over the input and its mirror images (nnU-Net's test-time mirroring),
    evaluated one after another in nnU-Net's order.

    The wrapped network's children are this module's children, so layer names are the network's own
    (``decoder.stages.3``). A layer runs once per mirror image: ``views`` lists, in call order, the dims each
    evaluation was flipped along, so a CAM can flip every evaluation back before adding it up.
    """

    def __init__(self, network: nn.Module, axes) -> None:
        super().__init__()
        for name, child in network.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_network", network)  # not a registered child: the names stay the network's
        self.combinations = mirror_combinations(axes or ())

    @property
    def views(self) -> list:
        return [()] + self.combinations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._network(x)
        for dims in self.combinations:
            out = out + torch.flip(self._network(torch.flip(x, dims)), dims)
        return out / (len(self.combinations) + 1) if self.combinations else out


class FoldEnsemble(nn.Module):
    """The mean over folds' networks (nnU-Net's ensemble of ``fold_N`` checkpoints), for the explainers.

    nnU-Net blends each fold's windows and then averages: the same function, which the windowing reproduces
    exactly for the segmentation (``members``). Layers are named ``fold_N.<layer>``; a CAM at a layer name without
    the prefix takes that layer in every fold (see ``explainers.gradcam.layer_passes``).
    """

    def __init__(self, members: dict) -> None:
        super().__init__()
        for name, member in members.items():
            self.add_module(name, member)

    @property
    def members(self) -> list:
        return list(self.children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        return sum(outs[1:], outs[0]) / len(outs)
