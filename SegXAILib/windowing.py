"""Where a model's sliding windows go and how their outputs are blended: one object per model format.

The segmentation and every explainer use the same `Windowing`, so a map explains exactly the function the
model predicts with. y(u) = Σ_w g_w(u) f_w(u) / Σ_w g_w(u) on the padded grid, cropped back afterwards.
- `MonaiWindowing`: MONAI's ``sliding_window_inference`` (SegXAI's own models): windows every
  patch·(1 − overlap), the last flush with the end, Gaussian σ = patch/8 clamped away from zero.
- `NnUNetWindowing`: nnU-Net v2's predictor: ``ceil((size − patch)/(patch·step)) + 1`` windows spread evenly
  (rounded), Gaussian σ = patch/8 scaled to a peak of 10 in float16 with zeros replaced by the smallest value,
  and the sums of logits and weights (and their quotient) kept in float16 as nnU-Net keeps them, also on a CPU.
Both pad an image smaller than the patch with zeros, half before and the rest after.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import SegXAIError
from .inference import CancelToken, ProgressFn, importance, monai_padding, sliding_window_logits, window_starts


class Windowing:
    """How windows tile the model grid: padding, window starts, the blend weights, and the blended logits."""

    name = "windowing"

    def __init__(self, patch: Sequence[int]) -> None:
        self.patch = tuple(int(p) for p in patch)

    def pads(self, shape: Sequence[int]) -> list:
        """(before, after) zero padding per axis for an image of ``shape`` (only where it is smaller than a patch)."""
        return monai_padding(shape, self.patch)

    def starts(self, padded_shape: Sequence[int]) -> list:
        """Window start corners (one tuple per window) on the padded grid."""
        raise NotImplementedError

    def importance(self) -> np.ndarray:
        """The blend weight g of one window, float32 of the patch's shape."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"windowing": self.name, "patch": list(self.patch)}

    def logits(self, network: torch.nn.Module, image: np.ndarray, device: "str | torch.device" = "cpu",
               sw_batch_size: int = 2, progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
               stage: str = "segmenting") -> torch.Tensor:
        """Blended logits (C, K, J, I) float32 on the CPU for a model-grid image (K, J, I)."""
        raise NotImplementedError


class MonaiWindowing(Windowing):
    """MONAI's Gaussian-blended sliding window (SegXAI's own models)."""

    name = "monai"

    def __init__(self, patch: Sequence[int], overlap: float = 0.5) -> None:
        super().__init__(patch)
        self.overlap = float(overlap)

    def starts(self, padded_shape):
        return list(itertools.product(*(window_starts(s, p, self.overlap) for s, p in zip(padded_shape, self.patch))))

    def importance(self):
        return importance(self.patch)

    def describe(self):
        return {**super().describe(), "overlap": self.overlap}

    def logits(self, network, image, device="cpu", sw_batch_size=2, progress=None, cancel=None, stage="segmenting"):
        return sliding_window_logits(network, image, self.patch, self.overlap, device, sw_batch_size, progress, cancel,
                                     stage)


def nnunet_steps(size: int, patch: int, step: float) -> list:
    """nnU-Net v2's window starts along one axis: as many windows as a step of patch·step needs, spread evenly."""
    if size <= patch:
        return [0]
    count = int(math.ceil((size - patch) / (patch * step))) + 1
    stride = (size - patch) / (count - 1)
    return [int(np.round(stride * i)) for i in range(count)]


def nnunet_gaussian(patch: Sequence[int]) -> np.ndarray:
    """nnU-Net v2's blend weights: a Gaussian (σ = patch/8) scaled to a peak of 10, rounded to float16, zeros
    replaced by the smallest non-zero weight. Returned as float32 (every value exactly a float16)."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g = (g / (np.max(g) / 10)).astype(np.float16)
    g[g == 0] = g[g != 0].min()
    return g.astype(np.float32)


class NnUNetWindowing(Windowing):
    """nnU-Net v2's sliding window: its tile steps, its Gaussian, and float16 accumulation as its predictor does."""

    name = "nnunet"

    def __init__(self, patch: Sequence[int], step: float = 0.5, half_precision_sums: bool = True) -> None:
        super().__init__(patch)
        self.step = float(step)
        self.half_precision_sums = half_precision_sums
        self._gaussian = nnunet_gaussian(self.patch)

    def starts(self, padded_shape):
        return list(itertools.product(*(nnunet_steps(s, p, self.step) for s, p in zip(padded_shape, self.patch))))

    def importance(self):
        return self._gaussian

    def describe(self):
        return {**super().describe(), "step": self.step}

    def logits(self, network, image, device="cpu", sw_batch_size=2, progress=None, cancel=None, stage="segmenting"):
        """nnU-Net's blend of every window; for a fold ensemble (``network.members``) each fold is blended and the
        folds' logits are averaged, in float16, as ``nnUNetPredictor.predict_logits_from_preprocessed_data`` does."""
        device = torch.device(device)
        pads = self.pads(image.shape)
        padded = torch.from_numpy(np.pad(np.asarray(image, dtype=np.float32), pads))
        members = list(getattr(network, "members", None) or [network])
        total = None
        for m, member in enumerate(members):
            def fold_progress(stage_, fraction, m=m):
                if progress is not None:
                    progress(stage_, (m + fraction) / len(members))
            blended = self._blend(member, padded, device, fold_progress, cancel, stage)
            total = blended if total is None else total.add_(blended)
        if len(members) > 1:
            total /= len(members)
        crop = tuple(slice(lo, s - hi) for (lo, hi), s in zip(pads, padded.shape))
        return total[(slice(None),) + crop].float().contiguous()

    def _blend(self, network, x, device, progress, cancel, stage) -> torch.Tensor:
        """One network's Gaussian-weighted mean of its windows over the padded image, in the sums' precision."""
        starts = self.starts(x.shape)
        dtype = torch.float16 if self.half_precision_sums else torch.float32
        gaussian = torch.from_numpy(self._gaussian).to(dtype)
        total = None
        weights = torch.zeros(x.shape, dtype=dtype)
        network.to(device)
        with torch.inference_mode():
            for done, start in enumerate(starts, 1):
                if cancel is not None:
                    cancel.check()
                win = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
                with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                    out = network(x[win][None, None].to(device))[0]
                # as nnU-Net: the window's logits (float32 on a CPU, float16 under CUDA autocast) times the float16
                # Gaussian in their own precision, added into float16 sums (each addition rounded to float16)
                out = (out * gaussian.to(out.device, out.dtype)).cpu()
                if total is None:
                    total = torch.zeros((out.shape[0],) + tuple(x.shape), dtype=dtype)
                total[(slice(None),) + win] += out
                weights[win] += gaussian
                progress(stage, done / len(starts))
            torch.div(total, weights, out=total)
            if torch.isinf(total).any():  # nnU-Net refuses the same overflow of its float16 sums
                raise SegXAIError("the model's logits overflow nnU-Net's float16 sums (inf); its own predictor stops "
                                  "here too")
        return total.clone()  # a normal tensor again (outside inference mode it may be changed in place)
