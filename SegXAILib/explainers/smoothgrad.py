"""SmoothGrad (Smilkov et al. 2017) around any method: the mean of its maps over noisy copies of the image.

map = 1/N Σ_n inner(x + ε_n), ε_n ~ N(0, σ²) i.i.d. per voxel, σ = ``sigma`` × (max − min of the image on the
model grid): ``sigma`` is a fraction of the image's value range, as in the paper (15 % by default; the
paper found 10–20 % to work best). The noise lies only inside the volume (not in the sliding window's padding) and is drawn from a
torch generator seeded with ``seed``, one volume-shaped draw per sample — the draws captum's ``NoiseTunnel``
makes with ``nt_samples_batch_size=1`` after ``torch.manual_seed(seed)``. The baseline (for IG) stays clean,
as in captum. Each sample is the inner method's whole-volume map (``explain_padded``), so a CAM inner is
still defined for the whole volume; the totals are the samples' means.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import SegXAIError
from .base import Attribution, Explainer
from .tiling import Tiles, explain_padded


class SmoothGrad(Explainer):
    """The mean of ``inner``'s maps over ``samples`` noisy images (noise σ = ``sigma`` × the image's value range)."""

    name = "smoothgrad"

    def __init__(self, inner: Explainer, samples: int = 8, sigma: float = 0.15, seed: int = 0) -> None:
        if not isinstance(inner, Explainer):
            raise SegXAIError(f"SmoothGrad needs an explainer to smooth, got {type(inner).__name__}")
        if int(samples) < 1:
            raise SegXAIError(f"SmoothGrad needs at least 1 sample, got {samples}")
        if not float(sigma) >= 0:
            raise SegXAIError(f"SmoothGrad sigma is a fraction of the image's value range and must be >= 0, got {sigma}")
        self.inner, self.samples, self.sigma, self.seed = inner, int(samples), float(sigma), int(seed)

    @property
    def uses_layer(self) -> bool:  # a CAM inside needs its layer
        return self.inner.uses_layer

    @property
    def layer(self) -> Optional[str]:
        return getattr(self.inner, "layer", None)

    @property
    def bf16(self) -> str:  # the inner method's precision policy
        return self.inner.bf16

    def params(self) -> dict:
        return {"inner": self.inner.name, "inner_params": self.inner.params(), "samples": self.samples,
                "sigma": self.sigma, "sigma_is": "a fraction of the image's value range (max - min)", "seed": self.seed}

    def noise_std(self, image: np.ndarray) -> float:
        """σ in image units: ``sigma`` × (max − min) of the (unpadded) image."""
        return self.sigma * float(np.max(image) - np.min(image)) if image.size else 0.0

    def explain_tiles(self, tiles: Tiles):
        """The mean inner map on the padded grid (float32) and the means of the inner totals."""
        inside = tuple(slice(lo, s - hi) for (lo, hi), s in zip(tiles.pads, tiles.shape))
        volume = tiles.image[inside]
        std = self.noise_std(volume)
        generator = torch.Generator().manual_seed(self.seed)
        out = np.zeros(tiles.shape, dtype=np.float64)
        sums: dict = {}
        for n in range(self.samples):
            noisy = tiles.image.copy()
            if std > 0:
                noise = torch.empty(volume.shape, dtype=torch.float32).normal_(0.0, 1.0, generator=generator)
                noisy[inside] += (noise * torch.tensor(std, dtype=torch.float32)).numpy()
            stage = f"{tiles.stage}: sample {n + 1}/{self.samples}"
            m, totals = explain_padded(self.inner, tiles.with_image(noisy, stage))
            out += m
            add_totals(sums, totals)
        out = (out / self.samples).astype(np.float32)
        totals = mean_totals(sums, self.samples)
        if hasattr(self.inner, "diagnostics"):  # emptiness of the *mean* map, not the samples' mean emptiness
            totals.update(self.inner.diagnostics(tiles.crop(out), None))
        totals.update({"samples": self.samples, "noise_std": std})
        return out, totals

    # -- per batch item, each a volume of its own (the captum-style call) ----------------------------------------
    def attribute(self, network, inputs, class_index, weights, baseline: Optional[torch.Tensor] = None) -> Attribution:
        generator = torch.Generator().manual_seed(self.seed)
        flat = inputs.detach().flatten(1)
        std = (self.sigma * (flat.max(1).values - flat.min(1).values)).float().cpu().view(-1, *([1] * (inputs.ndim - 1)))
        total, sums = None, {}
        for _ in range(self.samples):
            noise = torch.empty(inputs.shape, dtype=torch.float32).normal_(0.0, 1.0, generator=generator) * std
            result = self.inner.attribute(network, inputs + noise.to(inputs.device, inputs.dtype), class_index, weights, baseline)
            total = result.maps.detach() if total is None else total + result.maps.detach()
            add_totals(sums, result.totals)
        return Attribution(total / self.samples, mean_totals(sums, self.samples))


def add_totals(sums: dict, totals: dict) -> None:
    """Accumulate the numeric totals (booleans and others are kept from the last sample)."""
    for key, value in totals.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            sums[key] = sums.get(key, 0.0) + float(value)
        else:
            sums[key] = value


def mean_totals(sums: dict, samples: int) -> dict:
    return {k: (v / samples if isinstance(v, float) else v) for k, v in sums.items()}
