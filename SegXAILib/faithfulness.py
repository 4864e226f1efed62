"""Perturbation scores: does removing what the map calls important change the model's answer?

- deletion / insertion (Petsiuk et al. 2018, in 3D) over a region's ranked voxels: a faithful map makes the
  score fall fast when its top voxels are replaced by the baseline (low deletion AUC) and rise fast when they
  are put back into the baseline (high insertion AUC);
- ROAD (Rong et al. 2022, remove-and-debias, no retraining): removed voxels are filled by noisy linear
  imputation from their neighbours, so the removal mask's shape leaks less; MoRF (most relevant first, low
  AUC is good) and LeRF (least relevant first, high AUC is good);
- faithfulness correlation (Bhatt et al. 2020): over random subsets of the region, the Pearson correlation
  between the map's sum on the subset and the score drop when the subset is replaced by the baseline.

``score(image) -> float`` is any re-scoring callable (``rescoring.region_probability`` for a network).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .errors import SegXAIError

ScoreFn = Callable[[np.ndarray], float]

#: fewer curve steps than this give an AUC too coarse to compare maps by; asking for fewer is an error
MIN_CURVE_STEPS = 10


def check_steps(steps: int) -> int:
    """``steps`` as an int, or a SegXAIError when it is below ``MIN_CURVE_STEPS`` (never silently raised)."""
    if int(steps) != steps or int(steps) < MIN_CURVE_STEPS:
        raise SegXAIError(f"curve steps {steps!r} is below the minimum {MIN_CURVE_STEPS}; "
                          f"use --curve-steps {MIN_CURVE_STEPS} or more")
    return int(steps)


def check_inputs(saliency: np.ndarray, region: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """The region as a bool array after checking shapes, finiteness and non-emptiness (clear errors)."""
    region = np.asarray(region, dtype=bool)
    for a in (saliency,) + others:
        if tuple(np.shape(a)) != tuple(region.shape):
            raise SegXAIError(f"array of shape {np.shape(a)} does not match the region's grid {region.shape}")
    if not np.all(np.isfinite(saliency[region])):
        raise SegXAIError("the saliency map has NaN or infinite values inside the region; recompute the map")
    if not region.any():
        raise SegXAIError("the region to score is empty; choose a class or region the model predicts")
    return region


def body_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels above ``threshold`` (model-grid image units: air lies below it), largest connected part, holes
    filled: the body, without the air around it and without small specks."""
    from scipy.ndimage import binary_fill_holes, label

    above = np.asarray(image) > threshold
    labels, n = label(above)
    if n == 0:
        raise SegXAIError(f"no voxel of the image lies above the air threshold {threshold}; is this a CT?")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return binary_fill_holes(labels == int(np.argmax(sizes)))


def ranked_units(saliency: np.ndarray, region: np.ndarray, seed: int = 0, patch: int = 1):
    """The region's voxels in decreasing saliency, as (flat voxel indices, end index of each unit).

    A unit is one voxel (``patch`` 1) or the region's voxels in one ``patch``³ cube of the grid, ranked by the
    cube's mean saliency. Ties are broken by a random permutation drawn from ``seed`` (not raster order).
    """
    patch = int(patch)
    if patch < 1:
        raise SegXAIError(f"patch size {patch} must be 1 (voxels) or more (cubes of that many voxels a side)")
    voxels = np.flatnonzero(region)
    values = np.asarray(saliency, dtype=np.float64).ravel()[voxels]
    if patch == 1:
        unit = np.arange(voxels.size)
        unit_score = values
    else:
        coords = np.unravel_index(voxels, region.shape)
        cube_shape = tuple(-(-s // patch) for s in region.shape)
        cube = np.ravel_multi_index(tuple(c // patch for c in coords), cube_shape)
        _, unit = np.unique(cube, return_inverse=True)
        unit_score = np.bincount(unit, weights=values) / np.bincount(unit)
    rng = np.random.default_rng(seed)
    tie_break = rng.permutation(unit_score.size)
    unit_order = np.lexsort((tie_break, -unit_score))
    rank_of_unit = np.empty_like(unit_order)
    rank_of_unit[unit_order] = np.arange(unit_order.size)
    voxel_order = np.argsort(rank_of_unit[unit], kind="stable")
    sizes = np.bincount(unit, minlength=unit_score.size)[unit_order]
    return voxels[voxel_order], np.cumsum(sizes)


def removal_counts(unit_ends: np.ndarray, steps: int) -> np.ndarray:
    """Voxels removed at each of ``steps`` + 1 evenly spaced fractions, rounded up to whole units."""
    total = int(unit_ends[-1])
    wanted = np.round(np.linspace(0.0, 1.0, steps + 1) * total).astype(np.int64)
    counts = np.zeros_like(wanted)
    positive = wanted > 0
    counts[positive] = unit_ends[np.searchsorted(unit_ends, wanted[positive], side="left")]
    return counts


def auc(y, x) -> float:
    """Trapezoidal area under a curve (numpy ≥ 2 renamed trapz to trapezoid)."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def normalised_auc(area: float, at_removed: float, at_original: float) -> float:
    """Where the AUC lies between the all-removed (0) and the original (1) score; nan when removing everything
    lowers the score by less than 5 % of it (then the curve's shape says nothing about the map)."""
    span = at_original - at_removed
    if not np.isfinite(span) or span <= 0.05 * abs(at_original):
        return float("nan")
    return float((area - at_removed) / span)


def deletion_insertion(score: ScoreFn, image: np.ndarray, baseline: np.ndarray, saliency: np.ndarray,
                       region: np.ndarray, steps: int = 20, seed: int = 0, patch: int = 1,
                       progress: Optional[Callable[[float], None]] = None) -> dict:
    """Deletion and insertion curves over the ranked voxels of ``region`` (fractions of the region, not of the grid).

    Deletion replaces the top voxels of the region by ``baseline``; insertion starts from the image with the whole
    region replaced and puts the top voxels back. Outside the region the image is untouched. Also returned: the
    score at 0 % and 100 % deletion and their difference (the curve's dynamic range; a baseline that leaves the
    model's answer unchanged gives a range near 0 and curves that say nothing).

    Caveat for segmentation: a removed voxel of the region also loses its own class probability, so a scattered
    (random) removal order falls fast too; judge deletion against the random control, and insertion with it
    (``bench/score_cost.py --real-check`` measures both on the bundled sample).
    """
    steps = check_steps(steps)
    region = check_inputs(saliency, region, image, baseline)
    order, ends = ranked_units(saliency, region, seed, patch)
    counts = removal_counts(ends, steps)
    flat_image, flat_base = np.asarray(image, np.float32).ravel(), np.asarray(baseline, np.float32).ravel()
    cache = {}

    def deleted(n):  # the image with the top n voxels removed
        key = ("d", n)
        if key not in cache:
            x = flat_image.copy()
            x[order[:n]] = flat_base[order[:n]]
            cache[key] = score(x.reshape(image.shape))
        return cache[key]

    def inserted(n):  # the region removed, then its top n voxels put back
        if n == order.size:
            return deleted(0)
        if n == 0:
            return deleted(order.size)
        x = flat_image.copy()
        x[order[n:]] = flat_base[order[n:]]
        return score(x.reshape(image.shape))

    deletion, insertion = [], []
    for i, n in enumerate(counts):
        if progress is not None:
            progress(i / len(counts))
        deletion.append(deleted(int(n)))
        insertion.append(inserted(int(n)))
    fractions = counts / order.size
    d_auc, i_auc = auc(deletion, fractions), auc(insertion, fractions)
    at_original, at_removed = deletion[0], deletion[-1]
    return {
        "fractions": fractions.tolist(),
        "deletion": deletion,
        "insertion": insertion,
        "deletion_auc": d_auc,
        "insertion_auc": i_auc,
        "deletion_auc_normalised": normalised_auc(d_auc, at_removed, at_original),
        "insertion_auc_normalised": normalised_auc(i_auc, at_removed, at_original),
        "score_original": at_original,
        "score_removed": at_removed,
        "dynamic_range": at_original - at_removed,
        "voxels": int(order.size),
    }


#: 26-neighbourhood offsets and their weights 1/d² (face 1, edge 1/2, corner 1/3); in one plane these are in
#: the ratio of Rong et al.'s 1/6 (direct) and 1/12 (diagonal), so a one-slice volume imputes as their 2D code
NEIGHBOURS = [((dk, dj, di), 1.0 / (dk * dk + dj * dj + di * di))
              for dk in (-1, 0, 1) for dj in (-1, 0, 1) for di in (-1, 0, 1) if (dk, dj, di) != (0, 0, 0)]


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation in 3D: every removed voxel equals the weighted mean of its in-grid neighbours
    (``NEIGHBOURS``), the kept voxels fixed; one sparse symmetric system solved for all removed voxels at once."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import cg, spsolve

    image = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    unknown = np.flatnonzero(removed)
    out = image.copy()
    if unknown.size == 0:
        return out.astype(np.float32)
    if unknown.size == removed.size:
        raise SegXAIError("cannot impute: every voxel of the grid was removed, there is nothing to impute from")
    var = np.full(removed.size, -1, dtype=np.int64)
    var[unknown] = np.arange(unknown.size)
    coords = np.unravel_index(unknown, removed.shape)
    flat = image.ravel()
    diag = np.zeros(unknown.size)
    rhs = np.zeros(unknown.size)
    rows, cols, vals = [], [], []
    for offset, w in NEIGHBOURS:
        moved = [c + o for c, o in zip(coords, offset)]
        valid = np.ones(unknown.size, dtype=bool)
        for c, s in zip(moved, removed.shape):
            valid &= (c >= 0) & (c < s)
        ids = np.flatnonzero(valid)
        nb = np.ravel_multi_index(tuple(c[valid] for c in moved), removed.shape)
        diag[ids] += w
        inside = var[nb] >= 0
        rows.append(ids[inside])
        cols.append(var[nb[inside]])
        vals.append(np.full(int(inside.sum()), -w))
        np.add.at(rhs, ids[~inside], w * flat[nb[~inside]])
    rows.append(np.arange(unknown.size))
    cols.append(np.arange(unknown.size))
    vals.append(diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(unknown.size, unknown.size)).tocsr()
    if unknown.size <= 4000:
        solution = spsolve(a.tocsc(), rhs)
    else:  # symmetric positive definite (every removed part touches a kept voxel): conjugate gradients
        known = ~removed
        start = np.full(unknown.size, flat[known.ravel()].mean())
        solution, info = cg(a, rhs, x0=start, rtol=1e-8, maxiter=20 * unknown.size, M=_jacobi(diag))
        if info != 0:
            raise SegXAIError("the ROAD imputation did not converge; use a smaller region or patch")
    out.ravel()[unknown] = solution
    return out.astype(np.float32)


def _jacobi(diag):
    from scipy.sparse import diags

    return diags(1.0 / diag)


def noisy_linear_imputation(image: np.ndarray, removed: np.ndarray, noise: float = 0.01,
                            seed: int = 0) -> np.ndarray:
    """``linear_imputation`` plus N(0, noise²) on the imputed voxels (Rong et al.: the noise keeps the imputed
    values from being an exactly smooth, and so recognisable, fill)."""
    out = linear_imputation(image, removed)
    if noise > 0:
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(removed)
        out.ravel()[idx] += rng.normal(0.0, noise, idx.size).astype(np.float32)
    return out


def road(score: ScoreFn, image: np.ndarray, saliency: np.ndarray, region: np.ndarray, steps: int = 20,
         seed: int = 0, patch: int = 1, noise: float = 0.01, orders=("morf", "lerf"),
         progress: Optional[Callable[[float], None]] = None) -> dict:
    """ROAD curves over the ranked voxels of ``region``: at each fraction the removed voxels (most relevant first
    for MoRF, least relevant first for LeRF) are imputed afresh from the rest of the image and the image is
    re-scored. Good maps: low MoRF AUC, high LeRF AUC."""
    steps = check_steps(steps)
    region = check_inputs(saliency, region, image)
    order, ends = ranked_units(saliency, region, seed, patch)
    counts = removal_counts(ends, steps)
    reversed_order, ends_reversed = ranked_units(-np.asarray(saliency, dtype=np.float64), region, seed, patch)
    counts_lerf = removal_counts(ends_reversed, steps)
    out = {"fractions": (counts / order.size).tolist()}
    total = len(orders) * len(counts)
    done = 0
    for kind in orders:
        if kind not in ("morf", "lerf"):
            raise SegXAIError(f"unknown ROAD order {kind!r}; use morf or lerf")
        ranked, cs = (order, counts) if kind == "morf" else (reversed_order, counts_lerf)
        curve = []
        for step, n in enumerate(cs):
            if progress is not None:
                progress(done / total)
            done += 1
            mask = np.zeros(region.size, dtype=bool)
            mask[ranked[: int(n)]] = True
            perturbed = noisy_linear_imputation(image, mask.reshape(region.shape), noise, seed + step)
            curve.append(score(perturbed))
        fractions = cs / order.size
        out[kind] = curve
        out[f"{kind}_fractions"] = fractions.tolist()
        out[f"{kind}_auc"] = auc(curve, fractions)
    return out


def faithfulness_correlation(score: ScoreFn, image: np.ndarray, baseline: np.ndarray, saliency: np.ndarray,
                             region: np.ndarray, runs: int = 32, subset: float = 0.1, seed: int = 0,
                             patch: int = 1, progress: Optional[Callable[[float], None]] = None) -> dict:
    """Bhatt et al. 2020: Pearson correlation, over ``runs`` random subsets of ``subset`` of the region's units,
    between the map's sum on the subset and the score drop when the subset is replaced by ``baseline``."""
    region = check_inputs(saliency, region, image, baseline)
    if int(runs) < 3:
        raise SegXAIError(f"faithfulness correlation needs at least 3 runs, not {runs}")
    if not 0 < subset < 1:
        raise SegXAIError(f"faithfulness subset {subset} must be a fraction of the region between 0 and 1")
    order, ends = ranked_units(saliency, region, seed, patch)
    starts = np.concatenate([[0], ends[:-1]])
    n_units = ends.size
    size = max(1, int(round(subset * n_units)))
    rng = np.random.default_rng(seed)
    flat_image, flat_base = np.asarray(image, np.float32).ravel(), np.asarray(baseline, np.float32).ravel()
    flat_sal = np.asarray(saliency, np.float64).ravel()
    original = score(image)
    sums, drops = [], []
    for r in range(int(runs)):
        if progress is not None:
            progress(r / runs)
        chosen = rng.choice(n_units, size=size, replace=False)
        voxels = np.concatenate([order[starts[u]: ends[u]] for u in chosen])
        x = flat_image.copy()
        x[voxels] = flat_base[voxels]
        drops.append(original - score(x.reshape(image.shape)))
        sums.append(float(flat_sal[voxels].sum()))
    sums, drops = np.asarray(sums), np.asarray(drops)
    r = float(np.corrcoef(sums, drops)[0, 1]) if sums.std() > 0 and drops.std() > 0 else float("nan")
    return {"faithfulness_correlation": r, "runs": int(runs), "subset_units": int(size)}
