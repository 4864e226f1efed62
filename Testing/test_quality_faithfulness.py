"""Deletion / insertion, ROAD and faithfulness correlation against models whose true attribution is known.

Oracle: a linear model score(x) = Σ w·x. Its exact attribution against a baseline b is w⊙(x − b), removing a set
S of voxels lowers the score by exactly Σ_S w⊙(x − b), and the best possible deletion order is by decreasing
contribution. Maps that are not the truth (the same values shuffled, a random map) must score worse. ROAD's
imputation is checked against quantus's 2D noisy linear imputation (from Rong et al.'s code) and against affine
images, which the neighbour-mean equations reproduce exactly.
"""
from __future__ import annotations


import numpy as np
import pytest

from SegXAILib.errors import SegXAIError
from SegXAILib.faithfulness import (MIN_CURVE_STEPS, deletion_insertion, faithfulness_correlation,
                                    linear_imputation, noisy_linear_imputation, ranked_units, road)


def linear_problem(shape=(8, 8, 8), seed=0, baseline_value=0.0):
    """Image, baseline, weights, region (an interior cube), score function and the true attribution map."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    baseline = np.full(shape, baseline_value, dtype=np.float32)
    w = rng.normal(0.0, 1.0, shape) * (rng.random(shape) < 0.3) * 5 + rng.normal(0.0, 0.1, shape)
    region = np.zeros(shape, dtype=bool)
    region[1:-1, 1:-1, 1:-1] = True

    def score(x):
        return float(np.sum(w * x, dtype=np.float64))

    truth = (w * (image - baseline)).astype(np.float32)
    return image, baseline, w, region, score, truth


def shuffled(a, region, seed=1):
    """The same values inside the region, in a random arrangement."""
    out = a.copy()
    vals = out[region]
    np.random.default_rng(seed).shuffle(vals)
    out[region] = vals
    return out


def test_the_true_map_gives_the_optimal_deletion_curve_and_beats_shuffled_and_random():
    image, baseline, w, region, score, truth = linear_problem()
    steps = 20
    good = deletion_insertion(score, image, baseline, truth, region, steps)
    bad = deletion_insertion(score, image, baseline, shuffled(truth, region), region, steps)
    rnd = deletion_insertion(score, image, baseline, np.random.default_rng(5).random(image.shape), region, steps)
    # theory: after removing the k largest contributions of the region the score is s(x) - their sum
    contributions = np.sort(truth[region].astype(np.float64))[::-1]
    n = region.sum()
    expected = [score(image) - contributions[: int(round(f * n))].sum() for f in np.linspace(0, 1, steps + 1)]
    assert np.allclose(good["deletion"], expected, atol=1e-3)
    assert good["fractions"][-1] == 1.0 and len(good["fractions"]) == steps + 1
    for other in (bad, rnd):
        assert good["deletion_auc"] < other["deletion_auc"] - 0.5
        assert good["insertion_auc"] > other["insertion_auc"] + 0.5
    # both ends: nothing removed, and the whole region (and only the region) replaced by the baseline
    assert good["score_original"] == pytest.approx(score(image))
    assert good["score_removed"] == pytest.approx(score(np.where(region, baseline, image)), abs=1e-4)
    assert good["dynamic_range"] == pytest.approx(truth[region].sum(dtype=np.float64), abs=1e-3)
    assert good["insertion"][0] == pytest.approx(good["score_removed"]) and good["insertion"][-1] == pytest.approx(score(image))


def test_steps_are_fractions_of_the_region_not_of_the_grid():
    image, baseline, w, region, score, truth = linear_problem(shape=(12, 12, 12))
    region[:] = False
    region[4:7, 4:7, 4:7] = True  # 27 of 1728 voxels
    seen = []

    def recording(x):
        seen.append(int(np.count_nonzero(x != image)))
        return score(x)

    c = deletion_insertion(recording, image, baseline, truth, region, steps=MIN_CURVE_STEPS)
    assert max(seen) == 27  # never more than the region is removed
    assert c["voxels"] == 27
    # 10 steps over the 27 voxels (a step of the whole grid would remove 173 voxels at once)
    assert np.allclose(c["fractions"], np.round(np.linspace(0, 1, 11) * 27) / 27)
    counts = np.round(np.linspace(0, 1, 11) * 27).astype(int)
    assert set(seen) == set(counts.tolist()) | set((27 - counts).tolist())  # deletion and insertion images


def test_curve_steps_below_the_minimum_are_an_error_not_silently_raised():
    image, baseline, w, region, score, truth = linear_problem()
    for fn in (lambda: deletion_insertion(score, image, baseline, truth, region, MIN_CURVE_STEPS - 1),
               lambda: road(score, image, truth, region, MIN_CURVE_STEPS - 1)):
        with pytest.raises(SegXAIError, match="below the minimum"):
            fn()


def test_ties_are_broken_at_random_with_a_fixed_seed_not_in_raster_order():
    region = np.ones((6, 6, 6), dtype=bool)
    flat = np.zeros(region.shape)
    a, _ = ranked_units(flat, region, seed=0)
    b, _ = ranked_units(flat, region, seed=0)
    c, _ = ranked_units(flat, region, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # raster order would remove the first slices first; a random order spreads the first tenth over the grid
    first = np.unravel_index(a[:21], region.shape)[0]
    assert len(set(first.tolist())) >= 4
    # a strict ranking is kept whatever the seed
    ramp = np.arange(region.size, dtype=float).reshape(region.shape)
    assert np.array_equal(ranked_units(ramp, region, seed=3)[0], np.arange(region.size)[::-1])


def test_patch_granularity_removes_whole_cubes_of_the_region():
    image, baseline, w, region, score, truth = linear_problem(shape=(8, 8, 8))
    changed = []

    def recording(x):
        changed.append(x != image)
        return score(x)

    deletion_insertion(recording, image, baseline, truth + 10.0, region, steps=10, patch=2)
    cube = np.arange(8) // 2
    cube_id = cube[:, None, None] * 16 + cube[None, :, None] * 4 + cube[None, None, :]
    for mask in changed:
        assert not np.any(mask & ~region)
        for cid in np.unique(cube_id[mask]):  # every touched cube is removed wholly (within the region)
            members = (cube_id == cid) & region
            assert mask[members].all()


def test_faithfulness_correlation_is_one_for_the_true_map_of_a_linear_model():
    image, baseline, w, region, score, truth = linear_problem()
    good = faithfulness_correlation(score, image, baseline, truth, region, runs=40, subset=0.1)
    bad = faithfulness_correlation(score, image, baseline, shuffled(truth, region), region, runs=40, subset=0.1)
    rnd = faithfulness_correlation(score, image, baseline, np.random.default_rng(3).random(image.shape), region,
                                   runs=40, subset=0.1)
    assert good["faithfulness_correlation"] == pytest.approx(1.0, abs=1e-6)  # drops are exactly the map's sums
    assert bad["faithfulness_correlation"] < 0.6 and abs(rnd["faithfulness_correlation"]) < 0.6


def test_road_ranks_the_true_map_above_shuffled_and_random():
    rng = np.random.default_rng(0)
    shape = (10, 10, 10)
    image = rng.random(shape).astype(np.float32)  # i.i.d.: a removed voxel is imputed near the mean, 0.5
    w = np.where(rng.random(shape) < 0.15, 10.0, 0.1)
    region = np.zeros(shape, dtype=bool)
    region[1:-1, 1:-1, 1:-1] = True

    def score(x):
        return float(np.sum(w * x))

    truth = (w * (image - 0.5)).astype(np.float32)
    good = road(score, image, truth, region, steps=10)
    for other in (shuffled(truth, region), rng.random(shape)):
        r = road(score, image, other, region, steps=10)
        assert good["morf_auc"] < r["morf_auc"] - 5 and good["lerf_auc"] > r["lerf_auc"] + 5


def import_quantus():
    """quantus, after ``helpers.torchvision_standin`` (quantus imports zennit where it is installed, and zennit
    imports torchvision, of which only CUDA builds exist, for ResNet canonizers no test uses)."""
    from helpers import torchvision_standin

    torchvision_standin()
    return pytest.importorskip("quantus")


def test_imputation_of_one_slice_equals_quantus_road_imputation():
    quantus = import_quantus()
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    rng = np.random.default_rng(0)
    image = rng.random((1, 14, 11)).astype(np.float64)
    removed = rng.random(image.shape) < 0.4
    removed[0, 0, :3] = True  # border voxels too: out-of-grid neighbours drop out of both
    ours = linear_imputation(image, removed)
    theirs = quantus_imputation(image.copy(), np.flatnonzero(removed[0]), noise=0.0)
    assert np.allclose(ours, theirs, atol=1e-5)
    assert np.array_equal(ours[~removed], image[~removed].astype(np.float32))


@pytest.mark.parametrize("shape, hole", [((9, 9, 9), (slice(2, 7),) * 3), ((23, 23, 23), (slice(1, 22),) * 3)])
def test_imputation_reproduces_an_affine_image_in_3d(shape, hole):
    k, j, i = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    image = 0.3 * k - 0.2 * j + 0.05 * i + 1.0  # every symmetric neighbour mean of an affine image is itself
    removed = np.zeros(shape, dtype=bool)
    removed[hole] = True  # the second case has > 4000 unknowns: the conjugate-gradient path
    assert np.allclose(linear_imputation(image, removed), image, atol=1e-4)


def test_noise_goes_only_on_the_imputed_voxels():
    rng = np.random.default_rng(1)
    image = rng.random((10, 10, 10)).astype(np.float32)
    removed = rng.random(image.shape) < 0.3
    noisy = noisy_linear_imputation(image, removed, noise=0.05, seed=2)
    clean = linear_imputation(image, removed)
    diff = noisy - clean
    assert np.array_equal(diff[~removed], np.zeros(int((~removed).sum()), np.float32))
    assert np.std(diff[removed]) == pytest.approx(0.05, rel=0.15)
    with pytest.raises(SegXAIError, match="every voxel"):
        linear_imputation(image, np.ones(image.shape, bool))


def test_a_baseline_that_removes_nothing_gives_no_normalised_auc():
    image, baseline, w, region, score, truth = linear_problem()
    c = deletion_insertion(score, image, image.copy(), truth, region, 10)  # "removing" puts the same values back
    assert c["dynamic_range"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(c["deletion_auc_normalised"]) and np.isnan(c["insertion_auc_normalised"])
    positive = np.abs(w)  # a score that removing the region really lowers

    def positive_score(x):
        return float(np.sum(positive * x, dtype=np.float64))

    good = deletion_insertion(positive_score, image, baseline, positive * image, region, 10)
    assert good["dynamic_range"] > 0.05 * good["score_original"]
    expected = (good["deletion_auc"] - good["score_removed"]) / good["dynamic_range"]
    assert good["deletion_auc_normalised"] == pytest.approx(expected)
