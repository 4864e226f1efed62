"""Localisation and complexity scores against quantus (the oracle: its RelevanceMassAccuracy, RelevanceRankAccuracy,
PointingGame, Sparseness and Complexity, fed the 3D maps flattened to (1, 1, K, J·I)); the pointing game's
tolerance against a constructed geometry in mm; reference versus prediction."""
from __future__ import annotations

import numpy as np
import pytest

from SegXAILib.localisation import (array_spacing, energy_inside, localisation_scores, pointing_game, relevance_mass_accuracy,
                                    relevance_rank_accuracy)
from SegXAILib.map_complexity import entropy_complexity, gini_sparseness
from test_quality_faithfulness import import_quantus


def cases(n=4):
    """Continuous random maps (no ties) with blob-like masks on small 3D grids."""
    for seed in range(n):
        rng = np.random.default_rng(seed)
        shape = (6, 7, 8)
        a = rng.normal(size=shape) + 0.5
        k, j, i = np.mgrid[0:6, 0:7, 0:8]
        c = rng.integers(1, 5, 3)
        mask = (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 < rng.integers(3, 9)
        if seed % 2:  # a map whose maximum lies in the mask, so hits and misses both occur
            a[tuple(np.argwhere(mask)[0])] = 10.0
        yield a, mask


def quantus_score(metric, a, mask):
    flat = lambda x: x.reshape(1, 1, x.shape[0], -1).astype(np.float32)
    x = np.random.default_rng(0).random(flat(a).shape).astype(np.float32)
    return float(metric(model=None, x_batch=x, y_batch=np.array([0]), a_batch=flat(a), s_batch=flat(mask),
                        channel_first=True)[0])


def test_mass_rank_accuracy_and_pointing_game_match_quantus():
    quantus = import_quantus()
    for a, mask in cases():
        positive = np.clip(a, 0, None)  # Arras et al.: the mass is the positive relevance
        rma = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
        rra = quantus.RelevanceRankAccuracy(abs=False, normalise=False, disable_warnings=True)
        pg = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)
        assert relevance_mass_accuracy(a, mask) == pytest.approx(quantus_score(rma, positive, mask), rel=1e-5)
        assert relevance_rank_accuracy(a, mask) == pytest.approx(quantus_score(rra, a, mask), abs=1e-9)
        assert float(pointing_game(a, mask)) == quantus_score(pg, a, mask)


def test_sparseness_and_complexity_match_quantus():
    quantus = import_quantus()
    for a, mask in cases():
        gini = quantus_score(quantus.Sparseness(disable_warnings=True), a, mask)
        entropy = quantus_score(quantus.Complexity(disable_warnings=True), a, mask)
        assert gini_sparseness(a) == pytest.approx(gini, rel=1e-4)
        assert entropy_complexity(a) == pytest.approx(entropy, rel=1e-5)
    one_hot = np.zeros((5, 5, 5))
    one_hot[2, 2, 2] = 3.0
    assert gini_sparseness(one_hot) == pytest.approx(1 - 1 / 125) and entropy_complexity(one_hot) == 0.0
    assert gini_sparseness(np.ones((5, 5, 5))) == pytest.approx(0.0, abs=1e-12)
    assert entropy_complexity(np.ones((5, 5, 5))) == pytest.approx(np.log(125))


def test_pointing_game_tolerance_is_in_mm_along_each_axis():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[5, 5, 5] = True
    sal = np.zeros(mask.shape)
    sal[5, 5, 7] = 1.0  # two voxels away along the last axis
    spacing = (5.0, 5.0, 1.5)  # that axis has 1.5 mm voxels: 3 mm away
    assert pointing_game(sal, mask, spacing, 0.0) is False
    assert pointing_game(sal, mask, spacing, 2.9) is False
    assert pointing_game(sal, mask, spacing, 3.1) is True
    sal[:] = 0
    sal[7, 5, 5] = 1.0  # two voxels along the first axis: 10 mm
    assert pointing_game(sal, mask, spacing, 3.1) is False and pointing_game(sal, mask, spacing, 10.01) is True
    assert pointing_game(np.ones(mask.shape), mask, spacing, 5.0) is None  # a flat map points nowhere


def test_localisation_says_what_it_was_measured_against():
    reference = np.zeros((8, 8, 8), dtype=bool)
    reference[:4] = True
    prediction = np.zeros_like(reference)
    prediction[4:] = True
    sal = np.where(reference, 1.0, 0.0)
    sal[0, 0, 0] = 2.0
    with_ref = localisation_scores(sal, prediction=prediction, reference=reference, spacing=(3, 3, 3))
    without = localisation_scores(sal, prediction=prediction, spacing=(3, 3, 3), tolerance_mm=0)
    assert with_ref["localisation_against"] == "reference" and without["localisation_against"] == "prediction"
    assert with_ref["relevance_mass_accuracy"] == 1.0 and with_ref["relevance_rank_accuracy"] == 1.0
    assert without["relevance_mass_accuracy"] == 0.0 and without["pointing_game"] is False
    assert with_ref["pointing_game"] is True
    assert energy_inside(-sal, reference) != energy_inside(-sal, reference)  # no positive relevance: nan


def test_array_spacing_follows_the_array_axes():
    from SegXAILib.volume import Volume
    import SimpleITK as sitk

    image = sitk.Image([5, 6, 7], sitk.sitkFloat32)  # i, j, k sizes
    image.SetSpacing((0.5, 2.0, 4.0))
    volume = Volume.from_sitk(image)
    assert volume.array.shape == (7, 6, 5) and array_spacing(volume.grid) == pytest.approx((4.0, 2.0, 0.5))
