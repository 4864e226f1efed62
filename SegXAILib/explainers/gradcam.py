"""Class-activation maps for segmentation, defined for the whole volume F = Σ_{u∈M} y_c(u) (see ``tiling.py``).

The layer A of a tiled volume is every window's activation at the named layer; g = ∂(target)/∂A through
the Gaussian blend. Each map is assembled over all windows (blended as the logits are) *before* its ReLU:
- ``gradcam`` (Seg-Grad-CAM, Vinogradova et al. 2020): w_k = mean over the whole layer of g_k;
  map = ReLU(Σ_w (g_w/G) · Σ_k w_k A_{w,k}).
- ``hirescam`` (Seg-HiRes-Grad-CAM, Draelos & Carin 2020): map = ReLU(Σ_w Σ_k g_{w,k} ⊙ A_{w,k}); the windows'
  products are summed (g already carries each window's share), so Σ before the ReLU is the layer's
  first-order Taylor term of F.
- ``gradcampp`` (Grad-CAM++, Chattopadhyay et al. 2018, closed form for an exponential score): of the region's
  *mean* logit F/|M|, so the map does not depend on the region's size or on a scaling of the target weights;
  α = g² / (2g² + Σ_layer A · g³), w_k = Σ_layer α · ReLU(g), map = ReLU(Σ_w (g_w/G) · Σ_k w_k A_{w,k}).
  Its derivation assumes non-negative activations, which MONAI's residual units (an addition after the
  activation) do not have; BENCHMARKS.md measures where it puts its energy on the bundled models.
Raw values are kept (no rescaling): a CAM's unit is the target's per layer activation. ``diagnostics`` in the
totals say when a map is (almost) empty and how many channel weights are negative, so a front door can warn.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import SegXAIError
from .base import Attribution, Explainer, LayerCapture, target_score, to_grid, upsample

#: a map whose positive voxels are fewer than this fraction of the volume is reported as (almost) empty
EMPTY_FRACTION = 0.01


class _LayerCAM(Explainer):
    uses_layer = True
    #: whether windows are blended with g_w/G (activation-weighted maps) or summed (gradient-weighted maps)
    blended = True

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def params(self) -> dict:
        return {"layer": self.layer}

    # -- the definition, on a stack of windows' activations and gradients (W, C, d, h, w) ---------------------
    def channel_weights(self, acts: list, grads: list) -> Optional[torch.Tensor]:
        """Whole-layer channel weights (C,), or None for a method without them (HiResCAM)."""
        return None

    def window_map(self, act: torch.Tensor, grad: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        """(C, d, h, w) → (d, h, w) map of one window before the ReLU."""
        return (weights.view(-1, 1, 1, 1) * act).sum(0)

    def target_scale(self, region_weight: float) -> float:
        """Factor from F to the method's target (1 for F itself; 1/|M| for the region's mean)."""
        return 1.0

    # -- per batch: each batch item a volume of its own (the captum-style call) -------------------------------
    def attribute(self, network, inputs, class_index, weights, baseline: Optional[torch.Tensor] = None) -> Attribution:
        maps, scores = [], []
        for b in range(inputs.shape[0]):
            x = inputs[b:b + 1].detach().requires_grad_(True)  # a graph even when the weights are frozen
            with torch.enable_grad(), LayerCapture(network, self.layer) as cap:
                score = target_score(network(x), class_index, weights[b:b + 1]).sum()
                act, grad = cap.activation_and_gradient(score)
            grad = grad * self.target_scale(float(weights[b].sum()))
            w = self.channel_weights([act[0]], [grad[0]])
            maps.append(torch.relu(upsample(self.window_map(act[0], grad[0], w)[None], inputs.shape[2:])[0]))
            scores.append(float(score.detach()))
        return Attribution(torch.stack(maps), {"score": sum(scores)})

    # -- the whole tiled volume -------------------------------------------------------------------------------
    def explain_tiles(self, tiles):
        passes, score = layer_passes(tiles, [self.layer])
        acts, grads = passes[self.layer]
        return self.assemble(tiles, acts, grads, score)

    def assemble(self, tiles, acts: list, grads: list, score: float):
        """The whole-volume map on the padded grid from every window's activation and gradient of F."""
        scale = self.target_scale(float(tiles.region_voxels))
        grads = [g * scale for g in grads] if scale != 1.0 else grads
        weights = self.channel_weights(acts, grads)
        out = np.zeros(tiles.shape, dtype=np.float32)
        for n, (act, grad) in enumerate(zip(acts, grads)):
            m = upsample(self.window_map(act, grad, weights)[None], tiles.patch)[0].numpy()
            out[tiles.window(n)] += m * tiles.blend(n) if self.blended else m
        out = np.maximum(out, 0.0)
        return out, {"score": score, **self.diagnostics(tiles.crop(out), weights)}

    @staticmethod
    def diagnostics(cam: np.ndarray, weights: Optional[torch.Tensor]) -> dict:
        """How empty the map is and how many channel weights are negative: what a front door's warning says."""
        positive = float(np.count_nonzero(cam > 0)) / max(cam.size, 1)
        out = {"positive_fraction": positive, "empty": positive < EMPTY_FRACTION}
        if weights is not None:
            out["negative_weights"] = int((weights < 0).sum())
            out["channels"] = int(weights.numel())
        return out


class GradCAM(_LayerCAM):
    """Seg-Grad-CAM: channel weights from the mean of the gradient over the whole layer."""

    name = "gradcam"

    def channel_weights(self, acts, grads):
        total = sum(g.sum(dim=(1, 2, 3)) for g in grads)
        positions = sum(g[0].numel() for g in grads)
        return total / positions


class HiResCAM(_LayerCAM):
    """Seg-HiRes-Grad-CAM: gradient ⊙ activation, summed over channels and windows, then ReLU."""

    name = "hirescam"
    blended = False

    def window_map(self, act, grad, weights):
        return (grad * act).sum(0)


class GradCAMPlusPlus(_LayerCAM):
    """Grad-CAM++ of the region's mean logit, with its closed-form α over the whole layer."""

    name = "gradcampp"

    def target_scale(self, region_weight):
        return 1.0 / region_weight if region_weight > 0 else 0.0

    def channel_weights(self, acts, grads):
        sum_act = sum(a.sum(dim=(1, 2, 3)) for a in acts).view(-1, 1, 1, 1)
        total = 0.0
        for g in grads:
            g2 = g * g
            denom = 2 * g2 + sum_act * g2 * g
            alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
            total = total + (alpha * torch.relu(g)).sum(dim=(1, 2, 3))
        return total


def layer_passes(tiles, layers) -> tuple:
    """({layer: (activations, gradients of F)}, F) with one forward (+ backward where the target is) per window.

    Activations (C, d, h, w) fp32 on the CPU for every window; gradients zero where a window holds no target
    voxel. Several layers share the passes (used to compare layers by measurement). Where the network evaluates
    a layer several times per window (nnU-Net's test-time mirroring, a fold ensemble: ``base.layer_evaluations``)
    every evaluation is flipped back and the evaluations are stacked as channels: the layer of the function
    explained is all of them, so HiResCAM sums their gradient × activation and Grad-CAM weighs each channel of
    each evaluation by its own pooled gradient.
    """
    from .base import layer_evaluations

    evaluations = {name: layer_evaluations(tiles.network, name) for name in layers}
    out = {name: ([], []) for name in layers}
    score = 0.0
    for n in range(len(tiles)):
        captured = {name: [] for name in layers}
        handles = [m.register_forward_hook(lambda mod, i, o, name=name: captured[name].append(
            o[0] if isinstance(o, (tuple, list)) else o)) for name in layers for m, _ in evaluations[name]]
        try:
            x = tiles.tensor(tiles.image, n)
            with tiles.autocast():
                if tiles.has_target(n):
                    with torch.enable_grad():
                        s = target_score(tiles.network(x.requires_grad_(True)), tiles.class_index, tiles.share(n)).sum()
                        _check_used(layers, captured)
                        flat = [t for name in layers for t in captured[name]]
                        flat_grads = list(torch.autograd.grad(s, flat))
                    grads = {name: [flat_grads.pop(0) for _ in captured[name]] for name in layers}
                    score += float(s.detach())
                else:
                    with torch.no_grad():
                        tiles.network(x)
                    _check_used(layers, captured)
                    grads = {name: [None] * len(captured[name]) for name in layers}
        finally:
            for h in handles:
                h.remove()
        for name in layers:
            flips = [dims for _, views in evaluations[name] for dims in views]
            if len(flips) != len(captured[name]):
                raise SegXAIError(f"layer {name!r} ran {len(captured[name])} times in one window where "
                                  f"{len(flips)} were expected; choose another layer")
            acts, gs = [], []
            for t, g, dims in zip(captured[name], grads[name], flips):
                act = to_grid(tiles.network, t.detach().float())
                acts.append(torch.flip(act, dims)[0].cpu() if dims else act[0].cpu())
                if g is None:
                    gs.append(torch.zeros_like(acts[-1]))
                else:
                    g = to_grid(tiles.network, g.detach().float())
                    gs.append(torch.flip(g, dims)[0].cpu() if dims else g[0].cpu())
            out[name][0].append(acts[0] if len(acts) == 1 else torch.cat(acts))
            out[name][1].append(gs[0] if len(gs) == 1 else torch.cat(gs))
        tiles.step(n + 1, len(tiles))
    return out, score


def _check_used(layers, captured) -> None:
    missing = [name for name in layers if not captured.get(name)]
    if missing:
        raise SegXAIError(f"layer {missing[0]!r} was not used in the forward pass; choose another layer")
