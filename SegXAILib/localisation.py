"""Localisation: does the map's relevance lie on the structure? Against a reference label when one is given,
else against the model's own prediction; ``localisation_scores`` says which.

- energy inside: Σ positive relevance inside / Σ positive relevance;
- relevance mass accuracy (Arras et al. 2022): the same ratio, as quantus computes it on a positive map;
- relevance rank accuracy (Arras et al. 2022): of the K = |mask| top-ranked voxels, the fraction inside the mask;
- pointing game (Zhang et al. 2018) with a tolerance: the maximum lies within ``tolerance_mm`` of the mask.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import SegXAIError


def _check(saliency: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if tuple(np.shape(saliency)) != tuple(mask.shape):
        raise SegXAIError(f"saliency of shape {np.shape(saliency)} does not match the mask's grid {mask.shape}")
    return mask


def energy_inside(saliency: np.ndarray, region: np.ndarray) -> float:
    """Σ positive saliency inside the region / Σ positive saliency (nan when there is none)."""
    region = _check(saliency, region)
    positive = np.clip(saliency, 0, None)
    total = float(positive.sum(dtype=np.float64))
    if total <= 0:
        return float("nan")
    return float(positive[region].sum(dtype=np.float64)) / total


def relevance_mass_accuracy(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Arras et al. 2022: positive relevance inside the mask / all positive relevance (nan: empty mask or no
    positive relevance). Negative relevance is evidence against the class, not mass to be located."""
    mask = _check(saliency, mask)
    if not mask.any():
        return float("nan")
    return energy_inside(saliency, mask)


def relevance_rank_accuracy(saliency: np.ndarray, mask: np.ndarray, seed: int = 0) -> float:
    """Arras et al. 2022: the fraction of the K = |mask| highest-relevance voxels that lie in the mask
    (ties broken by a seeded random permutation; nan for an empty mask)."""
    mask = _check(saliency, mask)
    k = int(mask.sum())
    if k == 0:
        return float("nan")
    values = np.asarray(saliency, dtype=np.float64).ravel()
    tie_break = np.random.default_rng(seed).permutation(values.size)
    top = np.lexsort((tie_break, -values))[:k]
    return float(mask.ravel()[top].mean())


def pointing_game(saliency: np.ndarray, mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  tolerance_mm: float = 0.0) -> Optional[bool]:
    """True when a voxel of maximal saliency lies within ``tolerance_mm`` of the mask (``spacing`` in mm per
    array axis); None for a flat map (no maximum to point with) or an empty mask."""
    mask = _check(saliency, mask)
    if saliency.size == 0 or not mask.any() or float(np.max(saliency)) <= float(np.min(saliency)):
        return None
    peaks = np.asarray(saliency) == np.max(saliency)
    if np.any(peaks & mask):
        return True
    if tolerance_mm <= 0:
        return False
    from scipy.ndimage import distance_transform_edt

    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != mask.ndim or min(spacing) <= 0:
        raise SegXAIError(f"voxel spacing {spacing} must give one positive size in mm per axis of the map")
    distance = distance_transform_edt(~mask, sampling=spacing)  # mm from each voxel to the nearest mask voxel
    return bool(distance[peaks].min() <= tolerance_mm)


def array_spacing(grid) -> tuple:
    """mm per array axis (K, J, I) of a ``volume.Grid`` (its IJK→RAS columns, reversed): the ``spacing`` the
    pointing game wants for maps on that grid."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(grid.ijk_to_ras)[:3, :3], axis=0)[::-1])


def localisation_scores(saliency: np.ndarray, *, prediction: np.ndarray, reference: Optional[np.ndarray] = None,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0), tolerance_mm: float = 5.0,
                        seed: int = 0) -> dict:
    """Energy inside, relevance mass and rank accuracy and the pointing game against ``reference`` when given,
    else against ``prediction``; ``localisation_against`` names which."""
    against = "reference" if reference is not None else "prediction"
    mask = _check(saliency, reference if reference is not None else prediction)
    hit = pointing_game(saliency, mask, spacing, tolerance_mm)
    return {
        "localisation_against": against,
        "energy_inside": energy_inside(saliency, mask),
        "relevance_mass_accuracy": relevance_mass_accuracy(saliency, mask),
        "relevance_rank_accuracy": relevance_rank_accuracy(saliency, mask, seed),
        "pointing_game": hit,
        "pointing_game_tolerance_mm": float(tolerance_mm),
        "mask_fraction": float(mask.mean()),
    }
