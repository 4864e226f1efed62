"""Targets: region parsing, regions on an oblique model grid, and the empty region's all-zero map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers import make_explainer
from SegXAILib.explainers.tiling import explain_tiled
from SegXAILib.preprocessing import Preprocessed
from SegXAILib.targets import RegionSpec, ball_mask, mask_on_grid, parse_region, region_mask
from SegXAILib.volume import Grid, Volume

torch.set_num_threads(1)


def oblique_grid(shape=(10, 12, 14)) -> Grid:
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.8, 1.5, 2.5])
    m[:3, 3] = [10.0, -20.0, 5.0]
    return Grid(shape, m)


def test_parse_region():
    assert parse_region("predicted").kind == "predicted"
    assert parse_region("whole").kind == "whole"
    assert parse_region("empty").kind == "empty"
    spec = parse_region("point:1,2.5,-3:7")
    assert spec.kind == "point" and spec.point == (1.0, 2.5, -3.0) and spec.radius == 7.0
    assert parse_region("point:1,2,3").radius == 10.0
    assert parse_region("mask:/a/b.nii.gz").mask == "/a/b.nii.gz"
    for bad in ("point:1,2", "point:1,2,3:-1", "ball", "mask:"):
        with pytest.raises(SegXAIError):
            parse_region(bad)


def test_ball_on_oblique_grid():
    grid = oblique_grid()
    centre = grid.ijk_to_ras @ np.array([7, 6, 5, 1.0])  # voxel (i, j, k) = (7, 6, 5)
    mask = ball_mask(grid, centre[:3], 1.55)
    # neighbours within 1.55 mm: the centre, ±i (0.8 mm), ±j (1.5 mm); ±2i is 1.6 mm, ±k 2.5 mm away
    assert mask.sum() == 5
    assert mask[5, 6, 7] and mask[5, 6, 6] and mask[5, 6, 8] and mask[5, 5, 7] and mask[5, 7, 7]


def test_mask_resampled_onto_grid():
    grid = oblique_grid()
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[2:5, 3:9, 4:10] = 3
    same = mask_on_grid(Volume(labels, grid.ijk_to_ras), grid)
    assert same.sum() == 3 * 6 * 6
    # the same mask on a finer grid covering the same voxels resamples back to (nearly) the same set
    fine = grid.ijk_to_ras.copy()
    fine[:3, :3] /= 2
    fine[:3, 3] = grid.ijk_to_ras[:3, 3] - 0.25 * grid.ijk_to_ras[:3, :3].sum(axis=1)
    fine_labels = np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2)
    back = mask_on_grid(Volume(fine_labels, fine), grid)
    assert (back == same).mean() > 0.97


def test_region_kinds_on_model_grid():
    grid = oblique_grid()
    pre = Preprocessed(np.zeros(grid.shape, np.float32), grid, grid)
    predicted = np.zeros(grid.shape, np.uint8)
    predicted[1:3] = 2
    assert region_mask(RegionSpec("predicted"), pre, predicted, 2).sum() == 2 * 12 * 14
    assert region_mask(RegionSpec("whole"), pre, None, 1).all()
    assert not region_mask(RegionSpec("empty"), pre, None, 1).any()


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcampp", "ig", "lrp"])
def test_empty_region_gives_all_zero_map(method):
    # each method's own whole-volume computation is run on the empty region (explain_tiled short-cuts it):
    # F ≡ 0 there, so its gradients, relevance and CAM weights are all zero — and the short cut must agree
    from SegXAILib.explainers.tiling import Tiles, explain_padded

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv3d(4, 3, 1)).eval()
    with torch.no_grad():
        net[4].weight.abs_()  # a positive head: every method's map of a real region is non-zero
    image = np.random.default_rng(0).random((12, 10, 14)).astype(np.float32)
    base = np.zeros_like(image)
    empty = np.zeros(image.shape, dtype=bool)
    computed, _ = explain_padded(make_explainer(method, layer="3", steps=4), Tiles(net, image, 1, empty, (8, 8, 8), 0.5,
                                                                                  baseline=base))
    assert np.count_nonzero(computed) == 0
    explainer = make_explainer(method, layer="3", steps=4)
    if not hasattr(explainer, "explain_tiles"):  # an additive method skips target-free windows: compute one anyway
        x = torch.from_numpy(image[:8, :8, :8].copy())[None, None]
        zero = explainer.attribute(net, x, 1, torch.zeros(1, 8, 8, 8), torch.zeros_like(x)).maps
        assert zero.shape == (1, 8, 8, 8) and torch.count_nonzero(zero) == 0
    out, totals = explain_tiled(make_explainer(method, layer="3", steps=4), net, image, 1, empty, (8, 8, 8), 0.5, baseline=base)
    assert out.shape == image.shape and out.dtype == np.float32 and np.count_nonzero(out) == 0 and totals == {}
    region = empty.copy()
    region[4:8, 3:7, 5:9] = True  # the control: a real region gives a non-zero map for the same method
    out, _ = explain_tiled(make_explainer(method, layer="3", steps=4), net, image, 1, region, (8, 8, 8), 0.5, baseline=base)
    assert np.count_nonzero(out) > 0
