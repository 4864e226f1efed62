"""Scores that say how much an explanation map can be trusted, all on the model grid.

- energy inside: the fraction of positive saliency that falls inside the target region;
- pointing game: whether the map's maximum lies inside the region;
- deletion / insertion (Petsiuk et al. 2018, in 3D): voxels are removed from the image (replaced by the
  baseline) or inserted into the baseline in decreasing saliency order, and the target is re-scored at each
  step as the mean softmax probability of the class over the region (bounded, so the AUCs compare across
  cases); a faithful map makes deletion fall fast (low AUC) and insertion rise fast (high AUC);
- model randomisation (Adebayo et al. 2018): Spearman correlation between the trained model's map and a
  map from the same architecture with re-initialised weights; a high value means the map ignores the model.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .inference import sliding_window_logits
from .volume import partial_path, refuse_overwrite


def energy_inside(saliency: np.ndarray, region: np.ndarray) -> float:
    """Σ positive saliency inside the region / Σ positive saliency (nan when there is none)."""
    positive = np.clip(saliency, 0, None)
    total = float(positive.sum(dtype=np.float64))
    if total <= 0:
        return float("nan")
    return float(positive[region].sum(dtype=np.float64)) / total


def pointing_game(saliency: np.ndarray, region: np.ndarray):
    """True when the voxel of maximal saliency lies in the region; None for a flat map (no maximum to point with)."""
    if saliency.size == 0 or float(saliency.max()) <= float(saliency.min()):
        return None
    return bool(region.flat[int(np.argmax(saliency))])


def region_probability(network: torch.nn.Module, class_index: int, region: np.ndarray, patch, overlap: float,
                       device="cpu") -> Callable[[np.ndarray], float]:
    """A re-scoring function: model-grid image → mean softmax probability of the class over the region."""
    def score(image: np.ndarray) -> float:
        logits = sliding_window_logits(network, image, patch, overlap, device)
        prob = torch.softmax(logits, dim=0)[class_index].numpy()
        return float(prob[region].mean()) if region.any() else float("nan")
    return score


def deletion_insertion(score: Callable[[np.ndarray], float], image: np.ndarray, baseline: np.ndarray,
                       saliency: np.ndarray, steps: int = 10, progress: Optional[Callable[[float], None]] = None) -> dict:
    """Deletion and insertion curves over ``steps`` + 1 fractions of voxels (in saliency order) and their AUCs."""
    steps = max(int(steps), 10)
    order = np.argsort(-saliency.ravel(), kind="stable")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deletion, insertion = [], []
    for n, f in enumerate(fractions):
        if progress is not None:
            progress(n / len(fractions))
        chosen = order[: int(round(f * order.size))]
        deleted = image.copy().ravel()
        deleted[chosen] = baseline.ravel()[chosen]
        deletion.append(score(deleted.reshape(image.shape)))
        inserted = baseline.copy().ravel()
        inserted[chosen] = image.ravel()[chosen]
        insertion.append(score(inserted.reshape(image.shape)))
    return {
        "fractions": fractions.tolist(),
        "deletion": deletion,
        "insertion": insertion,
        "deletion_auc": auc(deletion, fractions),
        "insertion_auc": auc(insertion, fractions),
    }


def auc(y, x) -> float:
    """Trapezoidal area under a curve (numpy ≥ 2 renamed trapz to trapezoid)."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (nan when either is constant)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def randomised_copy(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A deep copy of the network with every layer's parameters re-initialised (seeded)."""
    clone = copy.deepcopy(network)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            if hasattr(module, "reset_parameters") and module is not clone:
                module.reset_parameters()
        for name, p in clone.named_parameters():  # parameters without a reset (e.g. position embeddings)
            if "position" in name:
                torch.nn.init.trunc_normal_(p.data, std=0.02)
    finally:
        torch.random.set_rng_state(gen_state)
    return clone.eval()


def plot_curves(curves: dict, path, title: str = "", overwrite: bool = False) -> Path:
    """Deletion (solid) and insertion (dashed) curves of each method in one PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    refuse_overwrite(path, overwrite)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method, c in curves.items():
        axes[0].plot(c["fractions"], c["deletion"], label=f"{method} (AUC {c['deletion_auc']:.3f})")
        axes[1].plot(c["fractions"], c["insertion"], "--", label=f"{method} (AUC {c['insertion_auc']:.3f})")
    for ax, name in zip(axes, ("deletion (lower is better)", "insertion (higher is better)")):
        ax.set_title(name)
        ax.set_xlabel("fraction of voxels")
        ax.set_ylabel("mean class probability in region")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = partial_path(path)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
