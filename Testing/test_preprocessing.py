"""Pre-processing onto the model grid and its inverse: identity where nothing is needed, exact reorientation,
every inverse on the input's exact grid, and the HU window."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_sitk
from SegXAILib.errors import SegXAIError
from SegXAILib.preprocessing import IntensityWindow, Preprocessing, orientation_matrix
from SegXAILib.volume import Volume


def _volume(array, spacing, direction, origin) -> Volume:
    return Volume.from_sitk(make_sitk(array, spacing, direction, origin))


def test_matching_grid_is_the_identity(ct_like):
    vol = _volume(ct_like, (3, 3, 3), np.eye(3), (1, 2, 3))
    pre = Preprocessing((3, 3, 3), (-200, 300))(vol)
    assert pre.is_identity and pre.grid is pre.source
    assert np.allclose(pre.image, IntensityWindow(-200, 300).apply(ct_like))
    back = pre.to_source(pre.image * 2)
    assert back.same_geometry(vol) and np.array_equal(back.array, pre.image * 2)


def test_reorientation_alone_is_exact(ct_like):
    """A RAS-stored volume at the model spacing: resampling hits voxel centres, so the round trip is exact."""
    vol = _volume(ct_like, (3, 3, 3), np.diag([-1.0, -1.0, 1.0]), (100.0, 80.0, -20.0))
    pre = Preprocessing((3, 3, 3), (-1024, 3071))(vol)
    assert not pre.is_identity
    assert pre.grid.shape == vol.shape
    # on the model grid, i now runs to the patient's left: the array is flipped in i and j
    hu = pre.image * (3071 + 1024) - 1024
    assert np.allclose(hu, ct_like[:, ::-1, ::-1], atol=1e-3)
    labels = (ct_like > 100).astype(np.uint8)
    back = pre.to_source(labels[:, ::-1, ::-1].copy(), "label")
    assert back.same_geometry(vol) and np.array_equal(back.array, labels)
    lin = pre.to_source(pre.image, "linear")
    assert np.allclose(lin.array, (np.clip(ct_like, -1024, 3071) + 1024) / 4095.0, atol=1e-5)


def test_oblique_input_comes_back_on_its_own_grid(awkward_geometries, ct_like):
    for name, spacing, direction, origin in awkward_geometries:
        vol = _volume(ct_like, spacing, direction, origin)
        pp = Preprocessing((2.0, 2.0, 2.0), (-200, 300))
        pre = pp(vol)
        # the model grid is axis-aligned LPS at 2 mm and covers the input's whole field of view
        assert np.allclose(pre.grid.ijk_to_ras[:3, :3], np.diag([-2.0, -2.0, 2.0]))
        corners = np.array([[i, j, k, 1] for i in (0, vol.shape[2] - 1) for j in (0, vol.shape[1] - 1) for k in (0, vol.shape[0] - 1)])
        ijk = np.linalg.solve(pre.grid.ijk_to_ras, (vol.ijk_to_ras @ corners.T)).T[:, :3]
        assert np.all(ijk > -1.0) and np.all(ijk < np.array(pre.grid.shape[::-1])), name
        # labels: the blob survives the trip there and back with its geometry exact
        blob = (ct_like > 100).astype(np.uint8)
        on_model = pp.resample_labels(vol.like(blob), pre.grid)
        back = pre.to_source(on_model, "label")
        assert back.same_geometry(vol, atol=1e-9), name
        dice = 2 * np.sum(back.array & blob) / (back.array.sum() + blob.sum())
        assert dice > 0.75, (name, dice)


def test_labels_to_source_takes_the_argmax(ct_like):
    vol = _volume(ct_like, (1.5, 1.5, 1.5), np.eye(3), (0, 0, 0))
    pre = Preprocessing((3, 3, 3), (-200, 300))(vol)
    p = np.zeros((3,) + pre.grid.shape, dtype=np.float32)
    p[0] = 0.5
    p[2, :, :, : pre.grid.shape[2] // 2] = 0.9
    labels = pre.labels_to_source(p)
    assert labels.same_geometry(vol)
    assert set(np.unique(labels.array)) == {0, 2}
    assert labels.array.dtype == np.uint8


def test_window_and_its_errors():
    w = IntensityWindow(-200, 300)
    assert w.value_of(-1000) == 0.0 and w.value_of(300) == 1.0 and abs(w.value_of(50) - 0.5) < 1e-9
    assert np.allclose(w.apply(np.array([-1000, -200, 50, 2000])), [0, 0, 0.5, 1])
    with pytest.raises(SegXAIError):
        IntensityWindow(10, 10)
    with pytest.raises(SegXAIError):
        orientation_matrix("LPL")
    assert np.array_equal(orientation_matrix("RAS"), np.diag([-1.0, -1.0, 1.0]))
