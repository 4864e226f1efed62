"""Sliding-window inference: MONAI's Gaussian-blended windows, device choice, bf16 on GPU, progress,
cancel, and a fallback that never lets CUDA running out of memory crash the run."""
from __future__ import annotations

import functools
import math
import threading
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .errors import Cancelled, SegXAIError

#: progress(stage, fraction in [0, 1])
ProgressFn = Callable[[str, float], None]


class CancelToken:
    """A flag another thread (the Slicer panel, a Ctrl-C handler) sets; work checks it between windows."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def choose_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; 'cuda' without a GPU is a clear error."""
    name = str(name).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith(("cuda", "gpu")):
        if not torch.cuda.is_available():
            raise SegXAIError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
        # every window has the model's patch shape, so cuDNN's per-shape autotuning is paid once and pays after
        torch.backends.cudnn.benchmark = True
        return torch.device(name.replace("gpu", "cuda"))
    if name == "cpu":
        return torch.device("cpu")
    raise SegXAIError(f"unknown device {name!r}; use auto, cpu or cuda")


_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (Intel AMX or AVX512-BF16), read from /proc/cpuinfo.

    Only there does bf16 pay on a CPU (measured: 2.6× per window on AMX); elsewhere it is emulated and slower.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # macOS, Windows: no /proc, keep fp32
        return False
    return any(flag in flags.split() for flag in _CPU_BF16_FLAGS)


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds up ``device``: a CUDA GPU with bf16, or a CPU with native bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def wants_bf16(precision: str, device: torch.device, what: str = "precision") -> bool:
    """Whether to run under bf16 autocast: 'bf16', 'fp32', or 'auto' (bf16 where it is fast on ``device``)."""
    if precision not in PRECISIONS:
        raise SegXAIError(f"unknown {what} {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


def window_starts(size: int, roi: int, overlap: float) -> list:
    """Start indices along one axis, as MONAI's sliding window places them (last window flush with the end)."""
    if size <= roi:
        return [0]
    interval = max(int(roi * (1 - overlap)), 1)
    n = int(math.ceil((size - roi) / interval)) + 1
    return sorted({min(i * interval, size - roi) for i in range(n)})


def monai_padding(shape: Sequence[int], patch: Sequence[int]) -> list:
    """(before, after) zero padding per axis that MONAI applies where the image is smaller than the window."""
    pads = []
    for size, roi in zip(shape, patch):
        diff = max(int(roi) - int(size), 0)
        pads.append((diff // 2, diff - diff // 2))
    return pads


def importance(patch: Sequence[int]) -> np.ndarray:
    """MONAI's Gaussian importance map (σ = 0.125 · patch), clamped away from zero as its sliding window does."""
    from monai.data.utils import compute_importance_map

    g = compute_importance_map(tuple(int(p) for p in patch), mode="gaussian", sigma_scale=0.125, device="cpu").float()
    return torch.clamp(g, min=max(float(g.min()), 1e-3)).numpy()


def count_windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window visits for this image and patch (for progress)."""
    total = 1
    for size, roi in zip(shape, patch):
        total *= len(window_starts(size, roi, overlap))
    return total


#: torch.OutOfMemoryError appeared in torch 2.5; older versions only have the CUDA one
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, OutOfMemoryError) or "out of memory" in str(err).lower()


def sliding_window_logits(
    network: torch.nn.Module,
    image: np.ndarray,
    patch: Sequence[int],
    overlap: float = 0.5,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 2,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
    stage: str = "segmenting",
) -> torch.Tensor:
    """Logits (C, K, J, I) float32 on the CPU for a model-grid image (K, J, I).

    Windows run on ``device`` (bf16 autocast on CUDA); the blended output stays on the CPU, so GPU memory is
    set by the window batch, not by the volume. On CUDA out-of-memory the window batch is halved, then the
    run moves to the CPU with a warning.
    """
    device = torch.device(device)
    total = count_windows(image.shape, patch, overlap)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    while True:
        try:
            return _run(network, x, patch, overlap, device, sw_batch_size, total, progress, cancel, stage)
        except Cancelled:
            raise
        except (RuntimeError, OutOfMemoryError) as err:
            if device.type != "cuda" or not _is_oom(err):
                raise
            torch.cuda.empty_cache()
            if sw_batch_size > 1:
                sw_batch_size //= 2
                warnings.warn(f"GPU out of memory; retrying with {sw_batch_size} window(s) at a time")
            else:
                warnings.warn("GPU out of memory even with one window; continuing on the CPU (slower)")
                device = torch.device("cpu")
                network.to(device)


def _run(network, x, patch, overlap, device, sw_batch_size, total, progress, cancel, stage) -> torch.Tensor:
    network.to(device)
    done = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        if cancel is not None:
            cancel.check()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = network(window.to(device, non_blocking=True))
        done[0] += window.shape[0]
        if progress is not None:
            progress(stage, min(done[0] / total, 1.0))
        return out.float()

    with torch.inference_mode():
        logits = sliding_window_inference(
            x,
            roi_size=tuple(int(p) for p in patch),
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=device,
            device=torch.device("cpu"),
        )
    return logits[0].float()
