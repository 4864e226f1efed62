"""Segment a volume end to end: pre-process → sliding-window logits → labels on the input grid → clean-up.

The one orchestration the CLI and the Slicer module both call; explanation steps build on its result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .inference import CancelToken, ProgressFn, choose_device
from .models.card import ModelCard
from .models.store import LoadedModel
from .postprocessing import postprocess
from .preprocessing import Preprocessed
from .volume import Volume, check_ct


@dataclass
class SegmentationResult:
    """Labels on the input grid, plus what explainers need: the model-grid image and logits."""

    labels: Volume  # uint8 class values on the input's grid
    card: ModelCard
    preprocessed: Preprocessed  # normalised image on the model grid, and the way back
    logits: torch.Tensor  # (C, K, J, I) float32 on the model grid, before post-processing
    device: str
    seconds: dict = field(default_factory=dict)

    def class_table(self) -> list:
        """One row per foreground class: name, label value, voxel count and volume in mL."""
        counts = np.bincount(self.labels.array.ravel(), minlength=self.card.num_classes)
        ml = self.labels.voxel_volume_ml
        return [
            {"name": c.name, "value": c.value, "voxels": int(counts[c.value]), "volume_ml": round(float(counts[c.value]) * ml, 2)}
            for c in self.card.foreground
        ]


def segment(
    volume: Volume,
    model: LoadedModel,
    device: str | torch.device = "auto",
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
    sw_batch_size: int = 2,
    name: str = "the input",
    preprocessed=None,
) -> SegmentationResult:
    """Segment ``volume`` with ``model``; every output lies on the input's exact grid.

    ``preprocessed``: ``model.preprocessing(volume)`` computed elsewhere (segxai batch's Ray read tasks do it, so
    resampling overlaps with inference); used as it is."""
    check_ct(volume, name)
    device = choose_device(device)
    seconds = {}
    t0 = time.perf_counter()
    if progress:
        progress("pre-processing", 0.0)
    pre = model.preprocessing(volume) if preprocessed is None else preprocessed
    seconds["preprocess"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    logits = model.windowing.logits(model.network, pre.image, device, sw_batch_size, progress, cancel)
    seconds["inference"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if cancel is not None:
        cancel.check()
    if progress:
        progress("resampling to the input grid", 0.0)
    labels = pre.labels_from_logits(logits)
    labels.array[...] = postprocess(labels.array, model.card.classes, model.card.postprocessing)
    seconds["postprocess"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    if progress:
        progress("done", 1.0)
    return SegmentationResult(labels, model.card, pre, logits, str(device), seconds)
