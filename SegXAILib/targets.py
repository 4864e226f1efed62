"""What an explanation explains: a class × a region (the pixel set M of Seg-Grad-CAM).

The explained scalar is the sum of the class's logit over the region's voxels on the model grid. Regions:
the class's predicted mask (default), a mask file (any label volume; non-zero voxels, resampled nearest onto
the model grid), a ball around a RAS point, the whole volume, or the empty set (whose map is all zeros).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import SegXAIError
from .preprocessing import Preprocessed, labels_on_grid
from .volume import Grid, Volume, read_volume

REGION_KINDS = ("predicted", "whole", "point", "mask", "empty")


@dataclass
class RegionSpec:
    """A region as the user names it, before it is put on a grid."""

    kind: str = "predicted"
    point: Optional[tuple] = None  # RAS mm, for kind 'point'
    radius: float = 10.0  # mm, for kind 'point'
    mask: Optional[object] = None  # a Volume or a file path, for kind 'mask'

    def describe(self) -> str:
        if self.kind == "point":
            return f"point {tuple(round(float(v), 2) for v in self.point)} RAS mm, radius {self.radius} mm"
        if self.kind == "mask":
            return f"mask {self.mask if not isinstance(self.mask, Volume) else 'volume'}"
        return self.kind


def parse_region(text: str) -> RegionSpec:
    """Parse the CLI's ``predicted|whole|empty|point:R,A,S[:RADIUS]|mask:FILE``."""
    text = (text or "predicted").strip()
    head, _, rest = text.partition(":")
    head = head.lower()
    if head in ("predicted", "whole", "empty") and not rest:
        return RegionSpec(head)
    if head == "point" and rest:
        coords, _, radius = rest.partition(":")
        try:
            point = tuple(float(v) for v in coords.split(","))
            radius_mm = float(radius) if radius else 10.0
        except ValueError:
            point, radius_mm = (), -1.0
        if len(point) != 3 or not radius_mm > 0:
            raise SegXAIError(f"region {text!r}: write a point as point:R,A,S or point:R,A,S:RADIUS (mm, radius > 0)")
        return RegionSpec("point", point=point, radius=radius_mm)
    if head == "mask" and rest:
        return RegionSpec("mask", mask=rest)
    raise SegXAIError(f"unknown region {text!r}; use predicted, whole, empty, point:R,A,S[:RADIUS] or mask:FILE")


@dataclass
class Target:
    """One explanation target on the model grid: class channel and a boolean region (K, J, I)."""

    class_value: int
    class_name: str
    region: np.ndarray  # bool, model grid
    description: str = ""

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.region))

    @property
    def is_empty(self) -> bool:
        return not bool(self.region.any())

    def to_json(self) -> dict:
        return {"class": self.class_name, "value": self.class_value, "region": self.description, "region_voxels": self.voxels}


def ball_mask(grid: Grid, point_ras, radius: float) -> np.ndarray:
    """Voxels of ``grid`` whose centres lie within ``radius`` mm of ``point_ras``."""
    m = grid.ijk_to_ras
    k, j, i = (np.arange(n, dtype=np.float64) for n in grid.shape)
    d2 = np.zeros(grid.shape, dtype=np.float64)
    for axis in range(3):
        coord = (m[axis, 3] - float(point_ras[axis])) + m[axis, 0] * i[None, None, :] + m[axis, 1] * j[None, :, None] + m[axis, 2] * k[:, None, None]
        d2 += coord**2
    return d2 <= float(radius) ** 2


def mask_on_grid(mask: Volume, grid: Grid) -> np.ndarray:
    """Non-zero voxels of a label volume, resampled (nearest neighbour) onto ``grid``."""
    return labels_on_grid(mask, grid) != 0


def region_mask(spec: RegionSpec, pre: Preprocessed, predicted: Optional[np.ndarray], class_value: int) -> np.ndarray:
    """The region as a boolean array on the model grid; ``predicted`` is the model-grid arg-max labels."""
    shape = tuple(pre.grid.shape)
    if spec.kind == "predicted":
        if predicted is None:
            raise SegXAIError("the predicted region needs the segmentation; segment the volume first")
        return np.asarray(predicted) == class_value
    if spec.kind == "whole":
        return np.ones(shape, dtype=bool)
    if spec.kind == "empty":
        return np.zeros(shape, dtype=bool)
    if spec.kind == "point":
        return ball_mask(pre.grid, spec.point, spec.radius)
    if spec.kind == "mask":
        mask = spec.mask if isinstance(spec.mask, Volume) else read_volume(spec.mask)
        return mask_on_grid(mask, pre.grid)
    raise SegXAIError(f"unknown region kind {spec.kind!r}; use one of {', '.join(REGION_KINDS)}")


def make_target(card, class_name: Optional[str], spec: RegionSpec, pre: Preprocessed, predicted: Optional[np.ndarray]) -> Target:
    """Resolve the class by name (default: the first foreground class) and the region on the model grid."""
    info = card.class_named(class_name) if class_name else card.foreground[0]
    region = region_mask(spec, pre, predicted, info.value)
    return Target(info.value, info.name, region, spec.describe())
