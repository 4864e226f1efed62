"""Pre-processing onto the model's grid, and its exact inverse back onto the input's grid.

Forward: reorient to the card's axis order (LPS: i→left, j→posterior, k→superior), resample to the card's
spacing (Gaussian anti-aliasing first when shrinking), clip HU to the card's window and scale it to [0, 1].
The model grid covers the input's whole field of view. Inverse: resample any array on the model grid back
onto the input's grid — nearest neighbour for labels, linear for probabilities and explanation maps — so
every output has the input's shape and IJK→RAS. When the input already is on a model-like grid (same axes,
same spacing), the model grid *is* the input grid and both directions are the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import SegXAIError
from .volume import LPS_TO_RAS, Grid, Volume

#: world axes (in LPS) that the model grid's i, j, k follow, by orientation code.
_AXES = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_matrix(code: str) -> np.ndarray:
    """3×3 LPS direction matrix whose columns point along the code's letters, e.g. 'LPS' → identity."""
    code = code.upper()
    if len(code) != 3 or sorted(_AXES[c][0] for c in code if c in _AXES) != [0, 1, 2]:
        raise SegXAIError(f"orientation {code!r} is not a valid code such as 'LPS' or 'RAS'")
    matrix = np.zeros((3, 3))
    for column, letter in enumerate(code):
        axis, sign = _AXES[letter]
        matrix[axis, column] = sign
    return matrix


def model_grid(source: Grid, spacing, orientation: str = "LPS", tolerance: float = 1e-4) -> Grid:
    """The grid the model sees: card orientation and spacing, covering the source's field of view.

    If the source already has that orientation and spacing, the source grid itself is returned, so the
    round trip is the identity and no voxel is interpolated.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = orientation_matrix(orientation)
    src_lps = LPS_TO_RAS @ source.ijk_to_ras
    src_spacing = np.linalg.norm(src_lps[:3, :3], axis=0)
    src_direction = src_lps[:3, :3] / src_spacing
    if np.allclose(src_direction, direction, atol=tolerance) and np.allclose(src_spacing, spacing, rtol=tolerance):
        return source
    # physical corners of the source's field of view (voxel edges, not centres)
    size = np.array(source.shape[::-1], dtype=np.float64)
    corners = np.array([[x, y, z] for x in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5) for z in (-0.5, size[2] - 0.5)])
    world = corners @ src_lps[:3, :3].T + src_lps[:3, 3]
    local = world @ direction  # coordinates along the model axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    new_size = np.maximum(np.ceil((hi - lo) / spacing - 1e-6).astype(int), 1)
    centre_lo = lo + 0.5 * spacing
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(spacing)
    ijk_to_lps[:3, 3] = direction @ centre_lo
    return Grid(tuple(int(n) for n in new_size[::-1]), LPS_TO_RAS @ ijk_to_lps)


def resample(image: sitk.Image, grid: Grid, interpolator: int, default: float, pixel_type: int) -> sitk.Image:
    """Resample a SimpleITK image onto ``grid`` (physical space, identity transform)."""
    return sitk.Resample(image, grid.reference_image(), sitk.Transform(), interpolator, float(default), pixel_type)


def antialias(image: sitk.Image, target_spacing) -> sitk.Image:
    """Gaussian-smooth before shrinking so that thin bright structures do not alias away."""
    src = np.array(image.GetSpacing())
    tgt = float(np.min(target_spacing))
    sigma = 0.5 * np.sqrt(np.clip(tgt**2 - src**2, 0.0, None))
    if np.all(sigma < 0.25 * src):
        return image
    return sitk.SmoothingRecursiveGaussian(image, np.maximum(sigma, 1e-3).tolist())


def labels_on_grid(labels: Volume, grid: Grid) -> np.ndarray:
    """A label volume's values on ``grid``: the array itself when the grids match, else nearest neighbour."""
    if labels.shape == tuple(grid.shape) and np.allclose(labels.ijk_to_ras, grid.ijk_to_ras, atol=1e-4):
        return labels.array
    image = labels.to_sitk()
    return sitk.GetArrayFromImage(resample(image, grid, sitk.sitkNearestNeighbor, 0, image.GetPixelID()))


@dataclass
class IntensityWindow:
    """Clip HU to [low, high] and scale linearly to [0, 1]; air (−1000 HU) maps to 0 for common windows."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise SegXAIError(f"intensity window [{self.low}, {self.high}] is empty; the card's window must rise")

    def apply(self, hu: np.ndarray) -> np.ndarray:
        out = np.clip(hu.astype(np.float32, copy=False), self.low, self.high)
        out -= self.low
        out /= self.high - self.low
        return out

    def value_of(self, hu: float) -> float:
        """The normalised value of one HU number (e.g. the air baseline for Integrated Gradients)."""
        return float(np.clip((hu - self.low) / (self.high - self.low), 0.0, 1.0))


@dataclass
class Preprocessed:
    """The model-grid image and everything needed to bring model-grid arrays back to the input grid."""

    image: np.ndarray  # float32 (K, J, I) on `grid`, normalised
    grid: Grid  # the model grid
    source: Grid  # the input's grid

    @property
    def is_identity(self) -> bool:
        return self.grid is self.source

    def to_source(self, array: np.ndarray, kind: str = "linear", default: float = 0.0) -> Volume:
        """Bring one model-grid array back to the input grid: ``kind`` is 'label' (nearest) or 'linear'."""
        if tuple(array.shape) != tuple(self.grid.shape):
            raise SegXAIError(f"array of shape {array.shape} is not on the model grid {self.grid.shape}")
        if self.is_identity:
            return Volume(array.copy(), self.source.ijk_to_ras.copy())
        if kind == "label":
            interpolator, pixel = sitk.sitkNearestNeighbor, sitk.GetImageFromArray(array[:1, :1, :1]).GetPixelID()
        elif kind == "linear":
            interpolator, pixel = sitk.sitkLinear, sitk.sitkFloat32
            array = array.astype(np.float32, copy=False)
        else:
            raise ValueError(f"kind must be 'label' or 'linear', not {kind!r}")
        image = Volume(array, self.grid.ijk_to_ras).to_sitk()
        out = resample(image, self.source, interpolator, default, pixel)
        return Volume(sitk.GetArrayFromImage(out), self.source.ijk_to_ras.copy())

    def labels_from_logits(self, logits) -> Volume:
        """Labels on the input grid from logits (C, K, J, I) on the model grid (softmax, then `labels_to_source`)."""
        import torch

        probabilities = torch.softmax(torch.as_tensor(logits), dim=0).numpy()
        return self.labels_to_source(probabilities)

    def labels_to_source(self, probabilities: np.ndarray) -> Volume:
        """Arg-max labels on the input grid from per-class probabilities (C, K, J, I) on the model grid.

        Each class's probability is resampled linearly and the arg-max is taken on the fine grid, one class
        at a time (memory: two input-sized float arrays), which gives smooth boundaries instead of the
        staircase that nearest-neighbour resampling of coarse labels would leave.
        """
        best = None
        labels = None
        for c in range(probabilities.shape[0]):
            p = self.to_source(probabilities[c], "linear", default=1.0 if c == 0 else 0.0).array
            if best is None:
                best, labels = p, np.zeros(p.shape, dtype=np.uint8)
            else:
                better = p > best
                labels[better] = c
                np.maximum(best, p, out=best)
        return Volume(labels, self.source.ijk_to_ras.copy())


class Preprocessing:
    """The card's pre-processing: one object, forward to the model grid, remembering how to go back."""

    def __init__(self, spacing, window, orientation: str = "LPS") -> None:
        self.spacing = np.asarray(spacing, dtype=np.float64)
        if self.spacing.shape != (3,) or np.any(self.spacing <= 0):
            raise SegXAIError(f"model spacing must be three positive numbers, got {spacing}")
        self.window = IntensityWindow(*window)
        self.orientation = orientation
        orientation_matrix(orientation)  # validate early

    def grid_for(self, source: Grid) -> Grid:
        return model_grid(source, self.spacing, self.orientation)

    def resample_image(self, volume: Volume, grid: Grid) -> np.ndarray:
        """HU on the model grid (linear, anti-aliased, air outside the field of view), float32."""
        image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
        image = antialias(image, self.spacing)
        return sitk.GetArrayFromImage(resample(image, grid, sitk.sitkLinear, -1024.0, sitk.sitkFloat32))

    def resample_labels(self, labels: Volume, grid: Grid) -> np.ndarray:
        """A label map on the model grid (nearest neighbour), e.g. a training reference."""
        return labels_on_grid(labels, grid)

    def hu_on_model_grid(self, volume: Volume) -> tuple:
        """(HU float32 on the model grid, that grid, the input grid); no resampling when the grids are one."""
        source = volume.grid  # a new Grid per access: keep this one, model_grid returns it when nothing changes
        grid = self.grid_for(source)
        hu = volume.array.astype(np.float32) if grid is source else self.resample_image(volume, grid)
        return hu, grid, source

    def __call__(self, volume: Volume) -> Preprocessed:
        hu, grid, source = self.hu_on_model_grid(volume)
        return Preprocessed(self.window.apply(hu), grid, source)
