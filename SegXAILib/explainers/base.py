"""The one call every explainer answers, and the shared plumbing: target scores and hooks on a named layer.

Protocol (as captum's ``attribute``): ``explainer.attribute(network, inputs, class_index, weights, baseline)``
takes a batch of windows ``inputs`` (B, 1, k, j, i) and per-voxel target weights (B, k, j, i) — the region
mask, times each voxel's blending share when tiled — and returns an `Attribution`: a map (B, k, j, i) at
the input's resolution plus additive totals (e.g. Σattribution and F(x)−F(x′)) that whole-volume tiling sums.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegXAIError


@dataclass
class Attribution:
    """A batch of maps (B, k, j, i) and additive totals over the batch (summed again across windows)."""

    maps: torch.Tensor
    totals: dict = field(default_factory=dict)


def target_score(logits: torch.Tensor, class_index: int, weights: torch.Tensor) -> torch.Tensor:
    """The explained scalar per batch item: Σ_voxels weight · logit of the class, shape (B,)."""
    return (logits[:, class_index] * weights).flatten(1).sum(1)


class Explainer:
    """Base class: subclasses set ``name`` and implement ``attribute``."""

    name = "explainer"
    uses_layer = False
    #: bf16 autocast: "auto" (used where bf16 is fast), "opt-in" (only when asked for), "never" (always fp32)
    bf16 = "auto"

    def attribute(self, network: nn.Module, inputs: torch.Tensor, class_index: int, weights: torch.Tensor,
                  baseline: Optional[torch.Tensor] = None) -> Attribution:
        raise NotImplementedError

    def params(self) -> dict:
        """Method parameters for the report."""
        return {}


def default_layer(architecture: str, network: Optional[nn.Module] = None, card=None) -> str:
    """The layer a CAM explains by default: the card's measured ``explanation.default_layer`` when it has one,
    else the constant documented beside the architecture.

    For the residual U-Net the constant is the last decoder block before the full-resolution output block;
    a two-level U-Net has no such block, so there the concatenated skip + decoder output ``model.1`` is used.
    """
    measured = (card.explanation.get("default_layer") if card is not None else None) or ""
    modules = dict(network.named_modules()) if network is not None else {}
    if measured and (network is None or measured in modules):
        return measured
    if architecture == "residual_unet":
        from ..models.unet import DEFAULT_LAYER
        if network is not None and DEFAULT_LAYER not in modules:
            return "model.1"
        return DEFAULT_LAYER
    if architecture == "transunet3d":
        from ..models.transunet import DEFAULT_LAYER
        return DEFAULT_LAYER
    if architecture == "nnunetv2":  # PlainConvUNet / ResidualEncoderUNet: the decoder stage below full resolution
        members = getattr(network, "members", None) or [network]
        stages = getattr(getattr(members[0], "decoder", None), "stages", None) if network is not None else None
        if stages is not None and len(stages) >= 2:
            return f"decoder.stages.{len(stages) - 2}"
        return "decoder.stages.0"
    raise SegXAIError(f"no default explanation layer for architecture {architecture!r}; pass --layer NAME "
                      "(segxai layers MODEL lists the layers one can explain)")


def find_layer(network: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; a clear error with a few valid names otherwise."""
    modules = dict(network.named_modules())
    if name not in modules or name == "":
        some = ", ".join(n for n in list(modules)[1:] if n.count(".") <= 2)[:400]
        raise SegXAIError(f"the network has no layer {name!r}; some layer names: {some}")
    return modules[name]


def to_grid(network: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A layer output as (B, C, d, h, w): ViT tokens (B, N, C) are folded back with ``tokens_to_grid``."""
    if tensor.ndim == 5:
        return tensor
    if tensor.ndim == 3 and hasattr(network, "tokens_to_grid"):
        return network.tokens_to_grid(tensor)
    raise SegXAIError(f"cannot map a layer output of shape {tuple(tensor.shape)} onto the 3D grid; choose a convolutional layer")


def layer_evaluations(network: nn.Module, name: str) -> list:
    """[(module, flips)]: each module that computes layer ``name`` and, in call order, the tensor dims each of its
    evaluations in one forward pass was mirrored along (``()`` for the plain input).

    A plain network: one module, evaluated once. nnU-Net's test-time mirroring (``views``): once per mirror image.
    A fold ensemble (``members``): a name without the fold prefix is that layer in every fold.
    """
    def views(net):
        return list(getattr(net, "views", None) or [()])

    modules = dict(network.named_modules())
    if name in modules and name != "":
        owner = next((m for prefix, m in network.named_modules()
                      if prefix and name.startswith(prefix + ".") and getattr(m, "views", None)), network)
        return [(modules[name], views(owner))]
    members = getattr(network, "members", None)
    if members:
        found = [(dict(m.named_modules()).get(name), views(m)) for m in members]
        if all(module is not None for module, _ in found):
            return found
    return [(find_layer(network, name), [()])]


class LayerCapture:
    """Context manager: records a layer's output during forward so its gradient can be taken."""

    def __init__(self, network: nn.Module, name: str) -> None:
        self.network = network
        self.module = find_layer(network, name)
        self.output: Optional[torch.Tensor] = None
        self._handle = None

    def _hook(self, module, inputs, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        if self.output is not None:  # mirrored or ensembled evaluations: only the whole-volume path combines them
            raise SegXAIError(f"layer {self.module.__class__.__name__} runs several times per forward pass (test-time "
                              "mirroring or a fold ensemble); explain the whole volume (explain_tiled), which combines them")
        self.output = output

    def __enter__(self) -> "LayerCapture":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def activation_and_gradient(self, score: torch.Tensor):
        """(A, ∂score/∂A) on the 3D grid, both (B, C, d, h, w), detached."""
        if self.output is None:
            raise SegXAIError("the chosen layer was not used in the forward pass; choose another layer")
        (grad,) = torch.autograd.grad(score, self.output, allow_unused=False)
        # fp32 from here on: under bf16 autocast the layer's output and its gradient are bf16
        return to_grid(self.network, self.output.detach().float()), to_grid(self.network, grad.detach().float())


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, d, h, w) → (B, *size) trilinearly (layer maps are coarser than the input)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)[:, 0]
