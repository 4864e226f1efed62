"""Integrated Gradients (Sundararajan et al. 2017) of the region-summed class logit.

attr = (x − x′) ⊙ ∫₀¹ ∂F(x′ + α(x − x′))/∂x dα, with Gauss–Legendre nodes (as captum's default), several
alphas per forward/backward. Baselines: ``air`` (the window's value of −1000 HU), ``zero``, ``blur`` (the
image smoothed with a wide Gaussian). Completeness: Σattr should equal F(x) − F(x′); the totals carry both
so the error |Σattr − ΔF| / |ΔF| can be reported for the whole volume.
Caution (measured): with instance norm, a *constant* baseline (air, zero) is a degenerate point — a norm
maps a constant window to 0 but rescales any tiny variation to unit variance, so F jumps within α ≲ 1e-4
and no practical number of steps integrates it (completeness error ≈ 0.67 on the trained U-Net, 32 or 64
steps, versus < 0.1 % with the blur baseline). So ``blur`` is the default; air and zero stay available, and
the error is always reported.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import SegXAIError
from .base import Attribution, Explainer, target_score

BASELINES = ("air", "zero", "blur")


def make_baseline(image: np.ndarray, kind: str, window=None, blur_sigma: float = 4.0) -> np.ndarray:
    """A model-grid baseline image for ``kind`` (air needs the card's intensity window)."""
    if kind == "zero":
        return np.zeros_like(image, dtype=np.float32)
    if kind == "air":
        value = window.value_of(-1000.0) if window is not None else 0.0
        return np.full(image.shape, value, dtype=np.float32)
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(image.astype(np.float32), sigma=blur_sigma, mode="nearest")
    raise SegXAIError(f"unknown baseline {kind!r}; use one of {', '.join(BASELINES)}")


def gauss_legendre(steps: int):
    """Alphas in (0, 1) and their weights (summing to 1) for ``steps`` Gauss–Legendre nodes."""
    nodes, weights = np.polynomial.legendre.leggauss(int(steps))
    return (nodes + 1) / 2, weights / 2


class IntegratedGradients(Explainer):
    """Integrated Gradients with ``steps`` nodes, ``alpha_batch`` alphas per forward/backward.

    ``alpha_batch`` None picks per device: 4 on a GPU (fills it), 1 on a CPU, where a larger batch only adds
    memory traffic (measured per α on a 96³ window, 2 threads: bf16 0.16 s at 1 against 0.22 s at 4).
    """

    name = "ig"
    # opt-in only: with bf16 the completeness error rose from 0.06-0.13 % to 1.6-2.3 % on the bundled models
    # (bench/run.py, CPU with AMX), because the gradients are those of a network with bf16-rounded weights
    bf16 = "opt-in"

    def __init__(self, steps: int = 32, alpha_batch: int | None = None, baseline: str = "blur") -> None:
        if steps < 1:
            raise SegXAIError(f"--steps must be at least 1, got {steps}")
        self.steps = int(steps)
        self.alpha_batch = None if alpha_batch is None else max(int(alpha_batch), 1)
        self.baseline = baseline

    def params(self) -> dict:
        return {"steps": self.steps, "baseline": self.baseline, "rule": "gauss-legendre",
                "alpha_batch": self.alpha_batch or "auto (4 on GPU, 1 on CPU)"}

    def attribute(self, network, inputs, class_index, weights, baseline: Optional[torch.Tensor] = None) -> Attribution:
        if baseline is None:
            baseline = torch.zeros_like(inputs)
        alphas, step_weights = gauss_legendre(self.steps)
        diff = inputs - baseline
        b = inputs.shape[0]
        grad_sum = torch.zeros_like(inputs)
        per_pass = self.alpha_batch or (4 if inputs.device.type == "cuda" else 1)
        for start in range(0, self.steps, per_pass):
            a = torch.as_tensor(alphas[start:start + per_pass], dtype=inputs.dtype, device=inputs.device)
            sw = torch.as_tensor(step_weights[start:start + per_pass], dtype=inputs.dtype, device=inputs.device)
            n = a.shape[0]
            view = (n, 1, 1, 1, 1, 1)
            path = (baseline[None] + a.view(view) * diff[None]).reshape(n * b, *inputs.shape[1:])
            path.requires_grad_(True)
            with torch.enable_grad():
                score = target_score(network(path), class_index, weights.repeat(n, 1, 1, 1)).sum()
                (grad,) = torch.autograd.grad(score, path)
            grad_sum += (grad.reshape(n, b, *inputs.shape[1:]) * sw.view(view)).sum(0)
        attr = (diff * grad_sum)[:, 0]
        # F(x) and F(x′) in fp32 even under bf16 autocast: completeness is then checked against the true score
        with torch.no_grad(), torch.autocast(inputs.device.type, enabled=False):
            ends = target_score(network(torch.cat([inputs, baseline])), class_index, weights.repeat(2, 1, 1, 1))
        totals = {"attribution_sum": float(attr.sum()), "score": float(ends[:b].sum()), "baseline_score": float(ends[b:].sum())}
        return Attribution(attr.detach(), totals)


def completeness_error(totals: dict) -> float:
    """|Σattr − (F(x) − F(x′))| / |F(x) − F(x′)| from summed totals (nan when ΔF is 0)."""
    delta = totals["score"] - totals["baseline_score"]
    if delta == 0:
        return float("nan")
    return abs(totals["attribution_sum"] - delta) / abs(delta)
