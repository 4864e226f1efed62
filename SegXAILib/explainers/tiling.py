"""Whole volumes through sliding windows, shared by every explainer: the function explained is the blended output.

Segmentation blends window logits with MONAI's Gaussian importance g_w: y(u) = Σ_w g_w(u) f_w(u) / G(u),
G = Σ_w g_w. Every method explains the one scalar F(x) = Σ_{u∈M} y_c(u) = Σ_w Σ_{u∈M∩w} (g_w/G)(u) f_{w,c}(u):
each window carries the target weights ``share`` = M · g_w/G, and the gradient of F is the sum of the windows'.
- Additive methods (IG, LRP, occlusion of the inputs' contributions) sum window maps: exactly the attribution of F
  (Σattr = F(x) − F(x′) for IG over the whole volume).
- The CAMs define their channel weights from the gradient of F over the whole layer (all windows) and assemble
  the weighted activations over all windows before the ReLU (see ``gradcam.py``); they implement
  ``explain_tiles``, which gets the `Tiles` below.
Windows without any target voxel are skipped by the additive methods (their gradient is zero).
Memory: the output map, G and the padded image/region/baseline — all on the model grid — plus one window
(the CAMs also keep one layer activation per window, at the layer's resolution).
Precision: where bf16 is fast (a GPU, or a CPU with AMX / AVX512-BF16) the CAMs' windows run under bf16
autocast by default, IG's only when asked for (its completeness degrades), LRP's never. Inputs, gradients
w.r.t. them, CAM arithmetic and every sum stay fp32.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Optional, Sequence

import numpy as np
import torch

from ..inference import CancelToken, ProgressFn, wants_bf16
from ..windowing import MonaiWindowing, Windowing
from .base import Explainer


def resolve_precision(precision: str, device: torch.device, explainer: Explainer) -> str:
    """The precision a method runs in. 'auto' → bf16 where it is fast (a GPU, or a CPU with AMX /
    AVX512-BF16) for the methods that allow it by default (the CAMs), fp32 otherwise; 'bf16' is honoured
    except by methods that need fp32 (LRP)."""
    policy = getattr(explainer, "bf16", "auto")
    if precision == "auto" and policy == "opt-in":
        precision = "fp32"
    return "bf16" if wants_bf16(precision, device) and policy != "never" else "fp32"


class Tiles:
    """One explanation problem on the padded model grid: the windows, their blend shares and the target weights."""

    def __init__(self, network: torch.nn.Module, image: np.ndarray, class_index: int, region: np.ndarray,
                 patch: Sequence[int], overlap: float = 0.5, device: "str | torch.device" = "cpu",
                 baseline: Optional[np.ndarray] = None, precision: str = "fp32",
                 progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None, stage: str = "explaining",
                 windowing: Optional[Windowing] = None):
        self.network, self.class_index, self.device = network, int(class_index), torch.device(device)
        # the model's own windows (nnU-Net's for an nnU-Net model); MONAI's from patch and overlap otherwise
        self.windowing = windowing if windowing is not None else MonaiWindowing(patch, overlap)
        self.patch = self.windowing.patch
        self.precision = precision
        self.progress, self.cancel, self.stage = progress, cancel, stage
        self.pads = self.windowing.pads(image.shape)
        self.image = np.pad(image.astype(np.float32, copy=False), self.pads)
        self.region = np.pad(region.astype(bool, copy=False), self.pads)
        self.baseline = np.pad(baseline.astype(np.float32, copy=False), self.pads) if baseline is not None else None
        self.shape = self.image.shape
        self.starts = self.windowing.starts(self.shape)
        self.importance = self.windowing.importance()
        self.norm = np.zeros(self.shape, dtype=np.float32)
        for n in range(len(self.starts)):
            self.norm[self.window(n)] += self.importance
        self.region_voxels = int(np.count_nonzero(self.region))

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, n: int) -> tuple:
        """Window ``n`` as slices of the padded grid."""
        return tuple(slice(a, a + p) for a, p in zip(self.starts[n], self.patch))

    def blend(self, n: int) -> np.ndarray:
        """g_w/G inside window ``n``: how much of each voxel's blended output this window makes."""
        win = self.window(n)
        return self.importance / self.norm[win]

    def has_target(self, n: int) -> bool:
        return bool(self.region[self.window(n)].any())

    def share(self, n: int) -> torch.Tensor:
        """Target weights (1, k, j, i) of window ``n``: region · g_w/G, on the device."""
        weights = np.where(self.region[self.window(n)], self.blend(n), 0.0).astype(np.float32)
        return torch.from_numpy(weights)[None].to(self.device)

    def tensor(self, array: np.ndarray, n: int) -> torch.Tensor:
        """Window ``n`` of a padded-grid array as a (1, 1, k, j, i) float32 tensor on the device."""
        return torch.from_numpy(np.ascontiguousarray(array[self.window(n)], dtype=np.float32))[None, None].to(self.device)

    def autocast(self):
        """bf16 autocast when this problem runs in bf16, nothing otherwise."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self, done: int, total: int, stage: Optional[str] = None) -> None:
        """Cancel point and progress report after ``done`` of ``total`` units of work."""
        if self.cancel is not None:
            self.cancel.check()
        if self.progress is not None:
            self.progress(stage or self.stage, done / max(total, 1))

    def with_image(self, padded_image: np.ndarray, stage: Optional[str] = None) -> "Tiles":
        """The same problem (windows, shares, region, baseline) on another padded-grid image (noise, occlusion)."""
        other = copy.copy(self)
        other.image = np.asarray(padded_image, dtype=np.float32)
        other.stage = stage or self.stage
        return other

    def crop(self, padded: np.ndarray) -> np.ndarray:
        """A padded-grid array back on the model grid."""
        crop = tuple(slice(lo, s - hi) for (lo, hi), s in zip(self.pads, self.shape))
        return np.ascontiguousarray(padded[crop])


def sum_windows(explainer: Explainer, tiles: Tiles):
    """An additive method's whole-volume map: its window maps for the windows' target shares, summed."""
    out = np.zeros(tiles.shape, dtype=np.float32)
    totals: dict = {}
    for n in range(len(tiles)):
        if tiles.cancel is not None:
            tiles.cancel.check()
        if tiles.has_target(n):
            x = tiles.tensor(tiles.image, n)
            b = tiles.tensor(tiles.baseline, n) if tiles.baseline is not None else None
            with tiles.autocast():
                result = explainer.attribute(tiles.network, x, tiles.class_index, tiles.share(n), b)
            out[tiles.window(n)] += result.maps[0].detach().float().cpu().numpy()
            for key, value in result.totals.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        tiles.step(n + 1, len(tiles))
    return out, totals


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
    windowing: Optional[Windowing] = None,
):
    """Map (K, J, I) float32 on the model grid and the summed totals, for a target class × region.

    ``precision`` is 'fp32', 'bf16' or 'auto', resolved per method by :func:`resolve_precision`. A method with
    its own whole-volume definition (the CAMs, occlusion, SmoothGrad) implements ``explain_tiles(tiles)``;
    the others are summed window by window. ``windowing`` is the model's (`LoadedModel.windowing`); without it,
    MONAI's windows of ``patch`` and ``overlap``.
    """
    device = torch.device(device)
    network.to(device)
    tiles = Tiles(network, image, class_index, region, patch, overlap, device, baseline,
                  resolve_precision(precision, device, explainer), progress, cancel, stage, windowing)
    if tiles.region_voxels == 0:  # nothing to explain: the empty region's map is all zeros, for every method
        return np.zeros(image.shape, dtype=np.float32), {}
    out, totals = explain_padded(explainer, tiles)
    return tiles.crop(out), totals


def explain_padded(explainer: Explainer, tiles: Tiles):
    """A method's map on the padded grid and its totals: its own whole-volume definition, or the window sum."""
    whole_volume = getattr(explainer, "explain_tiles", None)
    return whole_volume(tiles) if whole_volume is not None else sum_windows(explainer, tiles)
