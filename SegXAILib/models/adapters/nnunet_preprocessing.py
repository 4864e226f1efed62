"""nnU-Net v2's pre-processing of one CT, and its exact inverse, reimplemented from its documented behaviour.

Forward (as ``DefaultPreprocessor.run_case_npy``): SimpleITK's array (k, j, i) with no reorientation, axes
permuted by the plans' ``transpose_forward``; cropped to the bounding box of the non-zero voxels (holes filled);
normalised (CT: clip to the foreground's 0.5/99.5 percentiles, minus the mean, over the std); then
resized to the configuration's spacing, new shape round(old spacing / new spacing · n), with a scikit-image-style
resize (``scipy.ndimage.zoom`` on voxel edges, edge mode, clipped to the input's range): cubic in-plane, and
nearest neighbour along a coarse axis when one spacing is over 3× another (``separate z``).
Inverse (as ``convert_predicted_logits_to_segmentation_with_correct_shape``): logits resized linearly back to the
cropped shape, arg-max (or softmax), put back into the uncropped array (background outside), axes permuted back.
The model grid is a true grid: every step is an index map, so it has an IJK→RAS (oblique inputs included).
Checked against nnU-Net's own ``nnUNetPredictor`` in ``Testing/test_nnunet.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from ...errors import SegXAIError
from ...preprocessing import Preprocessed
from ...volume import Grid, Volume

#: nnU-Net's anisotropy threshold for resampling the coarse axis separately (``nnunetv2.configuration``)
ANISOTROPY_THRESHOLD = 3


def resize(data: np.ndarray, new_shape, order: int) -> np.ndarray:
    """scikit-image's ``resize(mode='edge', anti_aliasing=False)`` of one array, in float64: zoom on voxel edges,
    clipped to the input's range for interpolating orders."""
    new_shape = tuple(int(n) for n in new_shape)
    data = np.asarray(data, dtype=np.float64)
    if data.shape == new_shape:
        return data
    factors = [1 / (i / o) for i, o in zip(data.shape, new_shape)]
    out = ndimage.zoom(data, factors, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, data.min(), data.max(), out=out)
    return out


def separate_axis(current_spacing, new_spacing, force: Optional[bool] = None) -> Optional[int]:
    """The coarse axis resampled on its own (nnU-Net's ``determine_do_sep_z_and_axis``), or None."""
    def coarse(spacing):
        spacing = np.asarray(spacing, dtype=float)
        axes = np.where(max(spacing) / spacing == 1)[0]
        return int(axes[0]) if len(axes) == 1 else None

    if force is not None:
        return coarse(current_spacing) if force else None
    for spacing in (current_spacing, new_spacing):
        if np.max(spacing) / np.min(spacing) > ANISOTROPY_THRESHOLD:
            return coarse(spacing)
    return None


def resample(data: np.ndarray, new_shape, current_spacing, new_spacing, order: int, order_z: int = 0,
             force_separate_z: Optional[bool] = None) -> np.ndarray:
    """One channel (3D) to ``new_shape`` as nnU-Net's ``resample_data_or_seg_to_shape`` does (not for labels)."""
    new_shape = np.asarray(new_shape, dtype=int)
    shape = np.asarray(data.shape)
    if np.all(shape == new_shape):
        return data
    axis = separate_axis(current_spacing, new_spacing, force_separate_z)
    if axis is None:
        return resize(data, new_shape, order)
    inplane = tuple(int(n) for i, n in enumerate(new_shape) if i != axis)
    partial_shape = new_shape.copy()
    partial_shape[axis] = shape[axis]
    partial = np.zeros(partial_shape)
    for s in range(shape[axis]):
        index = [slice(None)] * 3
        index[axis] = s
        partial[tuple(index)] = resize(data[tuple(index)], inplane, order)
    if shape[axis] == new_shape[axis]:
        return partial
    scale = np.asarray(partial.shape, dtype=float) / new_shape
    grid = np.mgrid[:new_shape[0], :new_shape[1], :new_shape[2]].astype(float)
    coords = np.array([scale[d] * (grid[d] + 0.5) - 0.5 for d in range(3)])
    return ndimage.map_coordinates(partial, coords, order=order_z, mode="nearest")


def nonzero_box(data: np.ndarray) -> list:
    """[[lo, hi), …] per axis of the non-zero voxels with holes filled (nnU-Net's ``crop_to_nonzero``)."""
    mask = ndimage.binary_fill_holes(data != 0)
    if not mask.any():
        raise SegXAIError("the image is zero everywhere; nnU-Net crops to the non-zero voxels, so there is nothing to "
                          "segment")
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


@dataclass
class Normalisation:
    """nnU-Net's CT normalisation ('CTNormalization'): clip to the foreground's 0.5/99.5 percentiles, minus the
    foreground mean, over its std (all from the plans), in float32. The adapter refuses other schemes."""

    scheme: str
    mean: float = 0.0
    std: float = 1.0
    lower: float = -np.inf
    upper: float = np.inf

    def __post_init__(self) -> None:
        if self.scheme != "CTNormalization":
            raise SegXAIError(f"nnU-Net normalisation {self.scheme!r} is not supported; supported: CTNormalization")

    def apply(self, image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32, copy=True)
        np.clip(image, self.lower, self.upper, out=image)
        image -= self.mean
        image /= max(self.std, 1e-8)
        return image

    def value_of(self, hu: float) -> float:
        """The normalised value of one HU number (baselines for IG and the removal scores)."""
        return float((np.clip(hu, self.lower, self.upper) - self.mean) / max(self.std, 1e-8))


class NnUNetPreprocessed(Preprocessed):
    """The network's input on nnU-Net's grid, and the way back to the input grid as nnU-Net exports."""

    def __init__(self, image, grid, source, transpose, box, cropped_shape, source_spacing, model_spacing,
                 probability_resampling: dict) -> None:
        super().__init__(image, grid, source)
        self.transpose = list(transpose)
        self.box = box
        self.cropped_shape = tuple(cropped_shape)
        self.source_spacing = list(source_spacing)  # the input's spacing along the transposed axes
        self.model_spacing = list(model_spacing)
        self.probability_resampling = dict(probability_resampling)

    @property
    def is_identity(self) -> bool:
        return False

    def _back(self, array: np.ndarray, order: int) -> np.ndarray:
        """One model-grid array resized back to the cropped shape."""
        if order == 0:
            return resize(array, self.cropped_shape, 0)
        kw = self.probability_resampling
        return resample(array, self.cropped_shape, self.model_spacing, self.source_spacing, kw.get("order", 1),
                        kw.get("order_z", 0), kw.get("force_separate_z"))

    def _uncrop(self, cropped: np.ndarray, fill, dtype) -> np.ndarray:
        transposed_shape = [self.source.shape[t] for t in self.transpose]
        full = np.full(transposed_shape, fill, dtype=dtype)
        full[tuple(slice(lo, hi) for lo, hi in self.box)] = cropped
        return np.ascontiguousarray(full.transpose(np.argsort(self.transpose)))

    def to_source(self, array: np.ndarray, kind: str = "linear", default: float = 0.0) -> Volume:
        if tuple(array.shape) != tuple(self.grid.shape):
            raise SegXAIError(f"array of shape {array.shape} is not on the model grid {self.grid.shape}")
        if kind not in ("label", "linear"):
            raise ValueError(f"kind must be 'label' or 'linear', not {kind!r}")
        order = 0 if kind == "label" else 1
        dtype = array.dtype if kind == "label" else np.float32
        back = self._back(array, order).astype(dtype)
        return Volume(self._uncrop(back, default, dtype), self.source.ijk_to_ras.copy())

    def logits_back(self, logits) -> np.ndarray:
        """Logits (C, …) on the model grid resized to the cropped shape (nnU-Net's export step). nnU-Net keeps
        its logits in float16, and the resized ones too: so are these (as float32 values), to match its arg-max."""
        logits = np.asarray(logits, dtype=np.float32)
        return np.stack([self._back(channel, 1) for channel in logits]).astype(np.float16).astype(np.float32)

    def labels_from_logits(self, logits) -> Volume:
        back = self.logits_back(logits)
        labels = np.argmax(back, axis=0).astype(np.uint8)
        return Volume(self._uncrop(labels, 0, np.uint8), self.source.ijk_to_ras.copy())

    def probabilities_from_logits(self, logits) -> np.ndarray:
        """Softmax probabilities (C, K, J, I) on the input grid; background 1 outside the crop, as nnU-Net."""
        import torch

        back = torch.softmax(torch.from_numpy(self.logits_back(logits)), 0).numpy()
        return np.stack([self._uncrop(p, 1.0 if c == 0 else 0.0, np.float32) for c, p in enumerate(back)])


class NnUNetPreprocessing:
    """The forward transform of one nnU-Net configuration; ``window`` gives HU → normalised for baselines."""

    def __init__(self, transpose_forward, spacing, normalisation: Normalisation, data_resampling: dict,
                 probability_resampling: dict) -> None:
        self.transpose = [int(t) for t in transpose_forward]
        if sorted(self.transpose) != [0, 1, 2]:
            raise SegXAIError(f"the plans' transpose_forward {transpose_forward} is not a permutation of 3 axes")
        self.spacing = [float(s) for s in spacing]  # along the transposed axes
        self.window = normalisation
        self.data_resampling = dict(data_resampling)
        self.probability_resampling = dict(probability_resampling)

    def __call__(self, volume: Volume) -> NnUNetPreprocessed:
        source = volume.grid
        spacing_kji = volume.spacing[::-1]  # SimpleITK's spacing reversed, as nnU-Net's reader gives it
        data = np.asarray(volume.array, dtype=np.float32).transpose(self.transpose)
        source_spacing = [float(spacing_kji[t]) for t in self.transpose]
        box = nonzero_box(data)
        data = data[tuple(slice(lo, hi) for lo, hi in box)]
        cropped_shape = data.shape
        new_shape = [int(round(s / t * n)) for s, t, n in zip(source_spacing, self.spacing, cropped_shape)]
        data = self.window.apply(data)
        kw = self.data_resampling
        image = resample(data, new_shape, source_spacing, self.spacing, kw.get("order", 3), kw.get("order_z", 0),
                         kw.get("force_separate_z")).astype(np.float32)
        grid = Grid(tuple(image.shape), self._model_to_ras(volume, box, cropped_shape, image.shape))
        return NnUNetPreprocessed(image, grid, source, self.transpose, box, cropped_shape, source_spacing,
                                  self.spacing, self.probability_resampling)

    def _model_to_ras(self, volume: Volume, box, cropped_shape, model_shape) -> np.ndarray:
        """IJK→RAS of the model grid: model index a_d ↦ cropped index (a_d + ½)·n_d/m_d − ½ ↦ + box ↦ input k, j, i."""
        # transposed-array index c (axes a0, a1, a2) from the model array index a: c = scale·a + shift
        scale = np.array([n / m for n, m in zip(cropped_shape, model_shape)])
        shift = 0.5 * scale - 0.5 + np.array([lo for lo, _ in box])
        # input array index (k, j, i): kji[t_d] = c_d; input ijk = kji reversed
        a_to_ijk = np.zeros((4, 4))
        a_to_ijk[3, 3] = 1
        for d, t in enumerate(self.transpose):
            row = 2 - t  # position of array axis t in (i, j, k)
            a_to_ijk[row, d] = scale[d]
            a_to_ijk[row, 3] = shift[d]
        # the Grid's own index order is (i, j, k) = (a2, a1, a0)
        model_ijk_to_a = np.zeros((4, 4))
        model_ijk_to_a[3, 3] = 1
        for d in range(3):
            model_ijk_to_a[d, 2 - d] = 1
        return volume.ijk_to_ras @ a_to_ijk @ model_ijk_to_a
