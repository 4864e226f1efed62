"""Class-activation maps for segmentation (Seg-Grad-CAM, Vinogradova et al. 2020): the target is the sum of
a class's logit over a region M, explained at one named layer, and the map is upsampled to the input.

- ``gradcam``: w_k = mean over all three spatial axes of ∂y/∂A_k; map = ReLU(Σ_k w_k A_k).
- ``hirescam`` (Seg-HiRes-Grad-CAM, Draelos & Carin 2020): map = ReLU(Σ_k ∂y/∂A_k ⊙ A_k). Sign choice: the
  element-wise products are summed over channels first and ReLU'd once, as HiResCAM defines it, so a location
  keeps its net evidence; where the gradient is spatially constant this is exactly Grad-CAM.
- ``gradcampp`` (Grad-CAM++, Chattopadhyay et al. 2018, closed form for an exponential score):
  α = g² / (2g² + Σ_xyz A · g³), w_k = Σ_xyz α · ReLU(g), map = ReLU(Σ_k w_k A_k), over all three axes.
  Its derivation assumes non-negative (post-ReLU) activations. MONAI's residual units end in an addition
  after the activation, so about a third of the default layer's values are negative (measured on the
  bundled U-Net). Then every w_k > 0 and the map follows the overall activation rather than the target: 3 %
  of its energy falls in the liver on patient B, against 70 % for Grad-CAM at the same layer; deeper
  layers do no better (12–33 %). This is the method, not a bug: a test checks the formula against a hand
  computation. Prefer Grad-CAM or HiResCAM on these networks.
Maps are not normalised: values keep the target's units so windows can be summed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import Attribution, Explainer, LayerCapture, target_score, upsample


class _LayerCAM(Explainer):
    uses_layer = True

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def params(self) -> dict:
        return {"layer": self.layer}

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """(B, C, d, h, w) activation and gradient → (B, d, h, w) map before upsampling."""
        raise NotImplementedError

    def attribute(self, network, inputs, class_index, weights, baseline: Optional[torch.Tensor] = None) -> Attribution:
        x = inputs.detach().requires_grad_(True)  # a graph even when the weights are frozen
        with torch.enable_grad(), LayerCapture(network, self.layer) as cap:
            score = target_score(network(x), class_index, weights).sum()
            act, grad = cap.activation_and_gradient(score)
        maps = upsample(self.combine(act, grad), inputs.shape[2:])
        return Attribution(maps, {"score": float(score.detach())})


class GradCAM(_LayerCAM):
    """Seg-Grad-CAM: channel weights from the spatial mean of the gradient."""

    name = "gradcam"

    def combine(self, act, grad):
        w = grad.mean(dim=(2, 3, 4), keepdim=True)
        return torch.relu((w * act).sum(1))


class HiResCAM(_LayerCAM):
    """Seg-HiRes-Grad-CAM: gradient ⊙ activation, summed over channels, then ReLU."""

    name = "hirescam"

    def combine(self, act, grad):
        return torch.relu((grad * act).sum(1))


class GradCAMPlusPlus(_LayerCAM):
    """Grad-CAM++ with its closed-form α over all three spatial axes."""

    name = "gradcampp"

    def combine(self, act, grad):
        g2, g3 = grad**2, grad**3
        sum_act = act.sum(dim=(2, 3, 4), keepdim=True)
        denom = 2 * g2 + sum_act * g3
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        w = (alpha * torch.relu(grad)).sum(dim=(2, 3, 4), keepdim=True)
        return torch.relu((w * act).sum(1))
