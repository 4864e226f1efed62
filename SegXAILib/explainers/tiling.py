"""Whole volumes through sliding windows, shared by every explainer.

Design: we differentiate through the *blended* output. Segmentation blends window logits with MONAI's
Gaussian importance g_w: y(u) = Σ_w g_w(u) f_w(u) / G(u), G = Σ_w g_w. The explained scalar is
F = Σ_{u∈M} y_c(u) = Σ_w Σ_{u∈M∩w} (g_w(u)/G(u)) f_{w,c}(u), so each window explains its own share — the
region ∩ window, weighted by g_w/G — and the window maps are *summed* into the volume. For additive methods
(IG, LRP, HiResCAM) this is exactly the attribution of the blended output: Σattr = F(x) − F(x′) holds for
the whole volume, and a volume done in one window or many gives the same map wherever the windows agree.
Grad-CAM/Grad-CAM++ maps are summed the same way (each window's CAM is scaled by its share of the target).
Windows without any target voxel are skipped (the empty region gives an all-zero map for free).
Memory: the output map, G, and the padded image/region/baseline — all on the model grid — plus one window.
Precision: where bf16 is fast (a GPU, or a CPU with AMX / AVX512-BF16) the CAMs' windows run under bf16
autocast by default, IG's only when asked for (its completeness degrades), LRP's never. Inputs, gradients
w.r.t. them, CAM arithmetic and every sum stay fp32.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from ..inference import CancelToken, ProgressFn, wants_bf16, window_starts
from .base import Explainer


def importance(patch: Sequence[int]) -> np.ndarray:
    """MONAI's Gaussian importance map (σ = 0.125 · patch), clamped away from zero as MONAI does."""
    g = compute_importance_map(tuple(int(p) for p in patch), mode="gaussian", sigma_scale=0.125, device="cpu").float()
    return torch.clamp(g, min=max(float(g.min()), 1e-3)).numpy()


def resolve_precision(precision: str, device: torch.device, explainer: Explainer) -> str:
    """The precision a method runs in. 'auto' → bf16 where it is fast (a GPU, or a CPU with AMX /
    AVX512-BF16) for the methods that allow it by default (the CAMs), fp32 otherwise; 'bf16' is honoured
    except by methods that need fp32 (LRP)."""
    policy = getattr(explainer, "bf16", "auto")
    if precision == "auto" and policy == "opt-in":
        precision = "fp32"
    return "bf16" if wants_bf16(precision, device) and policy != "never" else "fp32"


def _pad_amounts(shape, patch) -> list:
    """Symmetric constant padding up to the patch size, as MONAI pads small images."""
    pads = []
    for size, roi in zip(shape, patch):
        diff = max(int(roi) - int(size), 0)
        pads.append((diff // 2, diff - diff // 2))
    return pads


def explain_tiled(
    explainer: Explainer,
    network: torch.nn.Module,
    image: np.ndarray,
    class_index: int,
    region: np.ndarray,
    patch: Sequence[int],
    overlap: float = 0.5,
    device: str | torch.device = "cpu",
    baseline: Optional[np.ndarray] = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
    stage: str = "explaining",
    precision: str = "fp32",
):
    """Map (K, J, I) float32 on the model grid and the summed totals, for a target class × region.

    ``precision`` is 'fp32', 'bf16' or 'auto', resolved per method by :func:`resolve_precision`.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device, explainer)
    network.to(device)
    patch = tuple(int(p) for p in patch)
    pads = _pad_amounts(image.shape, patch)
    padded = np.pad(image.astype(np.float32, copy=False), pads)
    mask = np.pad(region.astype(bool, copy=False), pads)
    base = np.pad(baseline.astype(np.float32, copy=False), pads) if baseline is not None else None
    shape = padded.shape
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch))))
    g = importance(patch)
    norm = np.zeros(shape, dtype=np.float32)
    for st in starts:
        norm[tuple(slice(a, a + p) for a, p in zip(st, patch))] += g
    out = np.zeros(shape, dtype=np.float32)
    totals: dict = {}
    for n, st in enumerate(starts):
        if cancel is not None:
            cancel.check()
        win = tuple(slice(a, a + p) for a, p in zip(st, patch))
        inside = mask[win]
        if inside.any():
            weights = np.where(inside, g / norm[win], 0.0).astype(np.float32)
            x = torch.from_numpy(np.ascontiguousarray(padded[win]))[None, None].to(device)
            w = torch.from_numpy(weights)[None].to(device)
            b = torch.from_numpy(np.ascontiguousarray(base[win]))[None, None].to(device) if base is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                result = explainer.attribute(network, x, class_index, w, b)
            out[win] += result.maps[0].detach().float().cpu().numpy()
            for key, value in result.totals.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        if progress is not None:
            progress(stage, (n + 1) / len(starts))
    crop = tuple(slice(lo, s - hi) for (lo, hi), s in zip(pads, shape))
    return np.ascontiguousarray(out[crop]), totals
