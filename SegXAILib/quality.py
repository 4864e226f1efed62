"""Scores that say how far an explanation map can be trusted, all on the model grid; ``evaluate_map`` runs the
chosen ones and returns one flat, JSON-able dict whose keys ``SCORES`` names and explains.

The scores live in small modules: ``localisation`` (energy inside, relevance mass / rank accuracy, pointing
game with a tolerance), ``map_complexity`` (Gini sparseness, entropy), ``faithfulness`` (deletion / insertion
over a region's ranked voxels, ROAD, faithfulness correlation), ``randomisation`` (Adebayo et al.'s cascading
model randomisation on the maps' union support), ``controls`` (random and edge-detector maps),
``rescoring`` (the cheap cropped re-scoring callable).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .controls import control_maps, edge_map, random_map  # noqa: F401  (re-exported)
from .errors import SegXAIError
from .faithfulness import (MIN_CURVE_STEPS, auc, body_mask, check_steps, faithfulness_correlation,  # noqa: F401
                           linear_imputation, noisy_linear_imputation, ranked_units, road)
from .faithfulness import deletion_insertion  # noqa: F401
from .localisation import (array_spacing, energy_inside, localisation_scores, pointing_game, relevance_mass_accuracy,  # noqa: F401
                           relevance_rank_accuracy)
from .map_complexity import entropy_complexity, gini_sparseness
from .randomisation import (cascading_randomisation, compare_maps, parameter_layers, randomised_copy,  # noqa: F401
                            spearman, ssim)
from .rescoring import region_probability  # noqa: F401
from .volume import refuse_overwrite, write_atomically

#: HU that replaces removed voxels by default: fat. Measured on the bundled sample (bench/score_cost.py
#: --baselines): with the liver filled by it the liver probability falls to 0.005 (TransUNet) and 0.0006
#: (residual U-Net), where today's σ=4 blur leaves 0.72 and 0.66, and water (0 HU) 0.52 and 0.21.
REMOVAL_HU = -100.0

#: HU below which a voxel is air, for the body mask
AIR_HU = -500.0


def removal_baseline(image: np.ndarray, window, hu: float = REMOVAL_HU) -> np.ndarray:
    """A model-grid image of constant ``hu`` (normalised by the card's intensity window): the baseline that
    removed voxels take in deletion / insertion and faithfulness correlation."""
    if window is None:
        raise SegXAIError("the removal baseline needs the model card's intensity window to convert HU")
    return np.full(np.shape(image), window.value_of(float(hu)), dtype=np.float32)


def body_region(image: np.ndarray, window, air_hu: float = AIR_HU) -> np.ndarray:
    """The body on the model grid: voxels above ``air_hu`` (via the card's window), largest part, holes filled.

    With a window whose floor lies above ``air_hu`` the threshold is the floor itself (only voxels above it)."""
    return body_mask(image, window.value_of(float(air_hu)) if window is not None else 0.0)


#: every key ``evaluate_map`` can return, and the ``randomisation_*`` keys of ``cascading_randomisation``:
#: (plain name, what is good)
SCORES = {
    "localisation_against": ("what localisation is measured against: 'reference' label or model 'prediction'", "reference when one exists"),
    "energy_inside": ("share of the positive relevance inside the mask", "high"),
    "relevance_mass_accuracy": ("relevance mass accuracy (Arras et al. 2022)", "high (1: all positive relevance in the mask)"),
    "relevance_rank_accuracy": ("relevance rank accuracy (Arras et al. 2022): top-|mask| voxels inside the mask", "high; chance = the mask's share of the grid"),
    "pointing_game": ("the map's maximum lies within the tolerance of the mask", "true"),
    "pointing_game_tolerance_mm": ("pointing game tolerance in mm", "setting, not a score"),
    "mask_fraction": ("share of the grid the mask covers (the chance level of the localisation scores)", "context, not a score"),
    "gini_sparseness": ("Gini sparseness of |map| (Chalasani et al. 2020)", "high = concentrated; judge with the localisation scores"),
    "entropy_complexity": ("entropy of |map| in nats (Bhatt et al. 2020)", "low = simpler map"),
}
for _prefix, _where in (("", "the target region"), ("body_", "the body")):
    SCORES.update({
        f"{_prefix}deletion_auc": (f"deletion AUC over {_where}'s ranked voxels", "low"),
        f"{_prefix}insertion_auc": (f"insertion AUC over {_where}'s ranked voxels", "high"),
        f"{_prefix}deletion_auc_normalised": (f"deletion AUC between the all-removed (0) and original (1) score, over {_where}", "low"),
        f"{_prefix}insertion_auc_normalised": (f"insertion AUC between the all-removed (0) and original (1) score, over {_where}", "high"),
        f"{_prefix}score_original": (f"target score with nothing removed ({_where})", "context: the curve's top"),
        f"{_prefix}score_removed": (f"target score with all of {_where} removed", "near 0, or the baseline does not remove the information"),
        f"{_prefix}dynamic_range": (f"original minus all-removed score ({_where})", "large; near 0 the curves say nothing"),
        f"{_prefix}curve_fractions": (f"fractions of {_where}'s voxels removed at each step", "x axis"),
        f"{_prefix}deletion_curve": (f"deletion curve over {_where}", "falls fast"),
        f"{_prefix}insertion_curve": (f"insertion curve over {_where}", "rises fast"),
    })
SCORES.update({
    "road_morf_auc": ("ROAD (Rong et al. 2022), most relevant first removed and imputed: AUC over the target region", "low"),
    "road_lerf_auc": ("ROAD, least relevant first removed and imputed: AUC over the target region", "high"),
    "road_score_removed": ("target score with the whole target region imputed by ROAD", "near 0, or ROAD's curves span little"),
    "road_dynamic_range": ("ROAD: score with nothing imputed minus with the whole region imputed", "large"),
    "road_fractions": ("fractions of the target region's voxels removed at each ROAD step", "x axis"),
    "road_morf_curve": ("ROAD MoRF curve", "falls fast"),
    "road_lerf_curve": ("ROAD LeRF curve", "stays high"),
    "randomisation_spearman": ("Spearman, on the union support, between the map and the map of the fully randomised model (Adebayo et al. 2018)", "low: the map depends on what the model learned"),
    "randomisation_ssim": ("SSIM, on the union support, between the map and the fully randomised model's map", "low"),
    "randomisation_spearman_abs": ("the randomisation Spearman on absolute values (signed maps)", "low"),
    "randomisation_ssim_abs": ("the randomisation SSIM on absolute values (signed maps)", "low"),
    "faithfulness_correlation": ("faithfulness correlation (Bhatt et al. 2020): map sum vs score drop on random subsets", "high (1: the map predicts every drop)"),
})

#: the score groups ``evaluate_map`` knows; the default leaves out the ones that cost many re-scorings
GROUPS = ("localisation", "complexity", "deletion_insertion", "body_deletion_insertion", "road",
          "faithfulness_correlation")
DEFAULT_GROUPS = ("localisation", "complexity", "deletion_insertion")


def evaluate_map(saliency: np.ndarray, *, image: np.ndarray, baseline: np.ndarray,
                 score: Callable[[np.ndarray], float], target_region: np.ndarray,
                 body_region: Optional[np.ndarray] = None, reference: Optional[np.ndarray] = None,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), steps: int = 20, seed: int = 0,
                 which: Sequence[str] = DEFAULT_GROUPS, patch: int = 1, tolerance_mm: float = 5.0,
                 road_noise: float = 0.01, faithfulness_runs: int = 32, faithfulness_subset: float = 0.1,
                 progress: Optional[Callable[[str, float], None]] = None) -> dict:
    """The ``which`` score groups (``GROUPS``) for one model-grid map, as one flat dict (keys in ``SCORES``).

    ``score(image) -> float`` re-scores the target (``rescoring.region_probability``); ``target_region`` is what
    the target is scored over (the prediction) and what deletion removes; ``reference`` (a label on the model grid)
    replaces it for localisation when given; ``body_region`` (``body_region()``) is needed for the body curves;
    ``spacing`` is mm per array axis of the model grid (for the pointing game's tolerance).
    """
    unknown = [w for w in which if w not in GROUPS]
    if unknown:
        raise SegXAIError(f"unknown score group {unknown[0]!r}; use any of {', '.join(GROUPS)}")
    saliency = np.asarray(saliency, dtype=np.float32)
    target_region = np.asarray(target_region, dtype=bool)
    if saliency.shape != target_region.shape:
        raise SegXAIError(f"map of shape {saliency.shape} is not on the target's grid {target_region.shape}")
    if any(w in which for w in ("deletion_insertion", "body_deletion_insertion", "road")):
        check_steps(steps)  # refuse before any costly work
    if "body_deletion_insertion" in which and body_region is None:
        raise SegXAIError("the body deletion curves need body_region (quality.body_region(image, window))")
    out: dict = {}

    def report(stage):
        return (lambda f: progress(stage, f)) if progress is not None else None

    if "localisation" in which:
        out.update(localisation_scores(saliency, prediction=target_region, reference=reference, spacing=spacing,
                                       tolerance_mm=tolerance_mm, seed=seed))
    if "complexity" in which:
        out["gini_sparseness"] = gini_sparseness(saliency)
        out["entropy_complexity"] = entropy_complexity(saliency)
    curves = [("deletion_insertion", "", target_region), ("body_deletion_insertion", "body_", body_region)]
    for group, prefix, region in curves:
        if group in which:
            c = deletion_insertion(score, image, baseline, saliency, region, steps, seed, patch,
                                   report(f"{prefix}deletion/insertion"))
            for key in ("deletion_auc", "insertion_auc", "deletion_auc_normalised", "insertion_auc_normalised",
                        "score_original", "score_removed", "dynamic_range"):
                out[prefix + key] = c[key]
            out[prefix + "curve_fractions"] = c["fractions"]
            out[prefix + "deletion_curve"] = c["deletion"]
            out[prefix + "insertion_curve"] = c["insertion"]
    if "road" in which:
        r = road(score, image, saliency, target_region, steps, seed, patch, road_noise, progress=report("ROAD"))
        out.update(road_morf_auc=r["morf_auc"], road_lerf_auc=r["lerf_auc"], road_fractions=r["fractions"],
                   road_morf_curve=r["morf"], road_lerf_curve=r["lerf"], road_score_removed=r["morf"][-1],
                   road_dynamic_range=r["morf"][0] - r["morf"][-1])
    if "faithfulness_correlation" in which:
        f = faithfulness_correlation(score, image, baseline, saliency, target_region, faithfulness_runs,
                                     faithfulness_subset, seed, patch, report("faithfulness correlation"))
        out["faithfulness_correlation"] = f["faithfulness_correlation"]
    return out


def plot_curves(curves: dict, path, title: str = "", overwrite: bool = False) -> Path:
    """Deletion (solid) and insertion (dashed) curves of each method in one PNG, written atomically.

    ``curves`` maps a method to a dict with fractions, deletion, insertion, deletion_auc and insertion_auc
    (``faithfulness.deletion_insertion``'s result)."""
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
        ax.set_xlabel("fraction of the region's voxels")
        ax.set_ylabel("mean class probability in region")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path
