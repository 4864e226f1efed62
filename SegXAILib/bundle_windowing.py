"""MONAI's sliding window with a MONAI bundle's own blend: constant or Gaussian with any σ (``SlidingWindowInferer``'s
``mode`` and ``sigma_scale``), for bundles whose inferer is not the Gaussian σ = patch/8 of `MonaiWindowing`.

Window starts and the zero padding of small images are MONAI's (as `MonaiWindowing`); the blend weights are
``compute_importance_map(patch, mode, sigma_scale)`` clamped to at least its minimum (and 1e-3), as MONAI's
``sliding_window_inference`` clamps them; the logits are MONAI's ``sliding_window_inference`` itself.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from .windowing import MonaiWindowing

#: MONAI's blend modes that SegXAI's explainers can reproduce window by window
MODES = ("gaussian", "constant")


class BundleWindowing(MonaiWindowing):
    """MONAI's sliding window with the bundle inferer's ``mode`` ('gaussian' or 'constant') and ``sigma_scale``."""

    name = "monai-bundle"

    def __init__(self, patch: Sequence[int], overlap: float = 0.25, mode: str = "constant",
                 sigma_scale: Union[float, Sequence[float]] = 0.125) -> None:
        super().__init__(patch, overlap)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.sigma_scale = float(sigma_scale) if np.ndim(sigma_scale) == 0 else tuple(float(s) for s in sigma_scale)

    def importance(self) -> np.ndarray:
        from monai.data.utils import compute_importance_map

        g = compute_importance_map(self.patch, mode=self.mode, sigma_scale=self.sigma_scale, device="cpu").float()
        return torch.clamp(g, min=max(float(g.min()), 1e-3)).numpy()

    def describe(self) -> dict:
        out = {**super().describe(), "mode": self.mode}
        if self.mode == "gaussian":
            out["sigma_scale"] = self.sigma_scale
        return out

    def logits(self, network, image, device="cpu", sw_batch_size=2, progress=None, cancel=None, stage="segmenting"):
        """Blended logits (C, K, J, I) float32 on the CPU, by MONAI's ``sliding_window_inference`` with this blend."""
        from monai.inferers import sliding_window_inference

        from .inference import count_windows

        device = torch.device(device)
        total = count_windows(image.shape, self.patch, self.overlap)
        done = [0]

        def predictor(window: torch.Tensor) -> torch.Tensor:
            if cancel is not None:
                cancel.check()
            out = network(window.to(device))
            done[0] += window.shape[0]
            if progress is not None:
                progress(stage, min(done[0] / total, 1.0))
            return out.float()

        network.to(device)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        with torch.inference_mode():
            out = sliding_window_inference(x, self.patch, sw_batch_size, predictor, overlap=self.overlap,
                                           mode=self.mode, sigma_scale=self.sigma_scale, sw_device=device,
                                           device=torch.device("cpu"))
        return torch.as_tensor(out)[0].float().clone()
