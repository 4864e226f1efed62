"""How concentrated a map is: sparseness (Gini index, Chalasani et al. 2020) and complexity (entropy of the
relevance distribution, Bhatt et al. 2020), both on absolute relevance as quantus computes them.

A map that puts all relevance on one voxel has Gini → 1 and entropy 0; a flat map has Gini 0 and entropy
log(n). Optionally restricted to a window (e.g. the region's bounding box) so that the grid's size does not
dominate.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import SegXAIError


def _values(saliency: np.ndarray, within: Optional[np.ndarray]) -> np.ndarray:
    a = np.abs(np.asarray(saliency, dtype=np.float64))
    if within is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != a.shape:
            raise SegXAIError(f"mask of shape {within.shape} does not match the map's grid {a.shape}")
        a = a[within]
    return a.ravel()


def gini_sparseness(saliency: np.ndarray, within: Optional[np.ndarray] = None) -> float:
    """Gini index of |saliency| (Chalasani et al. 2020): Σ (2i − n − 1)·a_(i) / (n·Σ a), a sorted ascending;
    nan for an all-zero map."""
    a = np.sort(_values(saliency, within))
    n, total = a.size, a.sum()
    if n == 0 or total <= 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * a) / (n * total))


def entropy_complexity(saliency: np.ndarray, within: Optional[np.ndarray] = None) -> float:
    """Shannon entropy (nats) of |saliency| / Σ |saliency| (Bhatt et al. 2020); nan for an all-zero map."""
    a = _values(saliency, within)
    total = a.sum()
    if a.size == 0 or total <= 0:
        return float("nan")
    p = a[a > 0] / total
    return float(-(p * np.log(p)).sum())
