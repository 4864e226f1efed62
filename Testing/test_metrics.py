"""Metrics against values computed by hand on masks small enough to count."""
from __future__ import annotations

import math

import numpy as np

from SegXAILib.metrics import confusion, hd95, mask_metrics, per_class_metrics


def _masks():
    # 1 × 4 × 5 slab: reference 6 voxels, prediction 5 voxels, 4 shared
    ref = np.zeros((1, 4, 5), bool)
    pred = np.zeros((1, 4, 5), bool)
    ref[0, 1:3, 1:4] = True  # 6 voxels
    pred[0, 1:3, 2:4] = True  # 4 voxels, all inside ref
    pred[0, 0, 0] = True  # 1 false positive
    return pred, ref


def test_counts_and_ratios_by_hand():
    pred, ref = _masks()
    assert confusion(pred, ref) == (4, 1, 2, 13)
    m = mask_metrics(pred, ref, (1.0, 1.0, 1.0), voxel_ml=0.002, with_hd95=False)
    assert math.isclose(m["dice"], 8 / 11)
    assert math.isclose(m["iou"], 4 / 7)
    assert math.isclose(m["sensitivity"], 4 / 6)
    assert math.isclose(m["specificity"], 13 / 14)
    assert math.isclose(m["precision"], 4 / 5)
    assert math.isclose(m["accuracy"], 17 / 20)
    assert math.isclose(m["volume_pred_ml"], 0.010) and math.isclose(m["volume_ref_ml"], 0.012)
    assert math.isclose(m["volume_error_ml"], -0.002)


def test_hd95_in_millimetres():
    a = np.zeros((1, 1, 40), bool)
    b = np.zeros((1, 1, 40), bool)
    a[0, 0, 10:20] = True
    b[0, 0, 13:23] = True  # shifted by 3 voxels
    # surface voxels of a 1-voxel-thick segment are all its voxels; each is 0..3 voxels from the other mask
    d = hd95(a, b, (1.0, 1.0, 2.0))
    assert math.isclose(d, 6.0)  # 3 voxels × 2 mm along i
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert math.isinf(hd95(a, np.zeros_like(a), (1, 1, 1)))
    assert math.isnan(hd95(np.zeros_like(a), np.zeros_like(a), (1, 1, 1)))


def test_identical_and_disjoint():
    pred, ref = _masks()
    same = mask_metrics(ref, ref, (1, 1, 1), 1.0)
    assert same["dice"] == 1.0 and same["hd95_mm"] == 0.0
    far = np.zeros_like(ref)
    far[0, 3, 4] = True
    assert mask_metrics(far, ref, (1, 1, 1), 1.0)["dice"] == 0.0


def test_per_class_uses_value_sets():
    pred = np.array([[[0, 1, 2, 2]]])
    ref = np.array([[[0, 1, 1, 2]]])
    out = per_class_metrics(pred, ref, {"liver": ([1], [1]), "liver incl. tumour": ([1, 2], [1, 2])}, (1, 1, 1), 1.0)
    assert math.isclose(out["liver"]["dice"], 2 / 3)
    assert out["liver incl. tumour"]["dice"] == 1.0


def test_error_components_name_the_largest_wrong_regions_with_volume_hu_and_place():
    from SegXAILib.error_components import describe, error_components
    from SegXAILib.volume import Volume

    hu = np.zeros((20, 20, 20), np.float32)
    hu[:, :, 15:] = 120.0  # an enhanced organ along high i
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])  # 2 mm voxels, LPS axes: 0.008 mL each
    image = Volume(hu, affine)
    ref = np.zeros(hu.shape, bool)
    ref[2:12, 2:12, 2:12] = True  # 1000 voxels = 8 mL
    pred = ref.copy()
    pred[2:12, 2:12, 2:4] = False  # 200 voxels missed (1.6 mL)
    pred[5:15, 5:15, 15:20] = True  # 500 voxels false positive in the organ (4 mL), centre i 17, j 9.5, k 9.5
    pred[18, 18, 0] = True  # one stray voxel: below min_ml, not listed
    rows = error_components(pred, ref, image)
    assert [r["kind"] for r in rows] == ["false positive", "missed"]
    fp, missed = rows
    assert fp["volume_ml"] == 4.0 and fp["median_hu"] == 120.0
    assert fp["centre_ras"] == [-34.0, -19.0, 19.0]
    assert missed["volume_ml"] == 1.6 and missed["median_hu"] == 0.0
    assert describe(rows).splitlines()[0] == "false positive 4.0 mL, median 120 HU, centre RAS (-34.0, -19.0, 19.0)"
    assert error_components(ref, ref, image) == []
