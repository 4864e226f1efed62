"""`Volume` — voxels in KJI order plus a 4×4 IJK→RAS matrix — and reading/writing it with SimpleITK.

This is the only place that converts between ITK's LPS world and Slicer's RAS world, so every
other module can think in one convention: RAS millimetres, arrays indexed ``[k, j, i]`` exactly as
Slicer's ``arrayFromVolume`` returns them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import SegXAIError

#: LPS <-> RAS: flip the first two world axes. Its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: file endings SimpleITK reads and writes for us, longest first so ".nii.gz" wins over ".gz".
VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: what we write: single files only, so that an atomic rename moves the whole image (.mhd/.nhdr split it)
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass(frozen=True)
class Grid:
    """Where voxels sit, without the voxels: array shape (K, J, I) and IJK→RAS."""

    shape: tuple
    ijk_to_ras: np.ndarray

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty SimpleITK image on this grid, to resample onto."""
        image = sitk.Image([int(n) for n in self.shape[::-1]], pixel_type)
        lps = LPS_TO_RAS @ self.ijk_to_ras
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image.SetSpacing(spacing.tolist())
        image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
        image.SetOrigin(lps[:3, 3].tolist())
        return image


@dataclass
class Volume:
    """A 3D image: ``array[k, j, i]`` and the 4×4 matrix that maps (i, j, k, 1) to RAS millimetres."""

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.array.ndim != 3:
            raise SegXAIError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        if self.ijk_to_ras.shape != (4, 4):
            raise SegXAIError(f"IJK→RAS must be 4×4, got {self.ijk_to_ras.shape}")

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """Array shape, (K, J, I)."""
        return tuple(self.array.shape)

    @property
    def grid(self) -> Grid:
        """This volume's geometry without its voxels."""
        return Grid(self.shape, self.ijk_to_ras.copy())

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (the columns' lengths)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (|det| of the 3×3 part, mm³ → mL)."""
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])) / 1000.0)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return LPS_TO_RAS @ self.ijk_to_ras

    def like(self, array: np.ndarray) -> "Volume":
        """A new volume with this one's geometry and other voxels (same shape required)."""
        if tuple(array.shape) != self.shape:
            raise SegXAIError(f"array shape {array.shape} does not match the volume's {self.shape}")
        return Volume(array, self.ijk_to_ras.copy())

    def same_geometry(self, other: "Volume", atol: float = 1e-6) -> bool:
        """True when both volumes have the same shape and the same IJK→RAS (to ``atol``)."""
        return self.shape == other.shape and bool(np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol, rtol=0))

    # ---- SimpleITK ------------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Convert a 3D scalar SimpleITK image (LPS) to a Volume (RAS)."""
        spacing = np.array(image.GetSpacing(), dtype=np.float64)
        direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = direction @ np.diag(spacing)
        ijk_to_lps[:3, 3] = image.GetOrigin()
        return cls(sitk.GetArrayFromImage(image), LPS_TO_RAS @ ijk_to_lps)

    def to_sitk(self) -> sitk.Image:
        """Convert to a SimpleITK image (LPS origin and direction, spacing from column lengths)."""
        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        if np.any(self.spacing <= 0):
            raise SegXAIError("the IJK→RAS matrix has a zero-length axis; the geometry is broken")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.CopyInformation(self.grid.reference_image())
        return image


# ---- reading ------------------------------------------------------------------------------------
def split_suffix(path: str | os.PathLike) -> tuple:
    """Split ``a/b/ct.nii.gz`` into (``a/b/ct``, ``.nii.gz``); unknown endings give (path, '')."""
    text = str(path)
    lower = text.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return text[: -len(suffix)], text[-len(suffix):]
    return text, ""


def stem(path: str | os.PathLike) -> str:
    """The file name without its volume ending: ``ct.nii.gz`` → ``ct``; a DICOM folder → its name."""
    base, _ = split_suffix(Path(path).name)
    return base


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise SegXAIError(f"{folder} is a folder with no DICOM series in it; give a DICOM series folder or an image file")
    # several series: take the one with most slices, and say so
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series), key=len)
    if len(series) > 1:
        import warnings

        warnings.warn(f"{folder} holds {len(series)} DICOM series; reading the largest ({len(files)} slices)")
    reader.SetFileNames(files)
    return reader.Execute()


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read an image file or DICOM folder with SimpleITK, turning every failure into one clear line."""
    path = Path(path)
    if not path.exists():
        raise SegXAIError(f"no such file or folder: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            image = sitk.ReadImage(str(path))
    except SegXAIError:
        raise
    except Exception as err:  # SimpleITK raises RuntimeError with a multi-line ITK message
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise SegXAIError(
            f"could not read {path} as an image ({first[:160]}); give a NIfTI, NRRD, MHA file or a DICOM folder"
        ) from None
    return image


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D scalar image (NIfTI, NRRD, MHA/MHD, DICOM series folder) into a `Volume`."""
    image = read_sitk(path)
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SegXAIError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a colour or vector image); "
            "SegXAI needs a scalar CT volume"
        )
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise SegXAIError(f"{path} is a {dim}D image of size {image.GetSize()}; SegXAI needs one 3D volume")
    if min(image.GetSize()) < 2:
        raise SegXAIError(f"{path} is a single slice of size {image.GetSize()}; SegXAI needs a 3D volume")
    return Volume.from_sitk(image)


def check_ct(volume: Volume, name: str = "the input") -> None:
    """Refuse volumes a model cannot segment meaningfully: NaN/inf voxels or a constant image."""
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise SegXAIError(f"{name} has {bad} NaN or infinite voxels; fix or mask them before segmenting")
    if array.size == 0:
        raise SegXAIError(f"{name} is empty (shape {array.shape})")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise SegXAIError(f"{name} is constant (every voxel is {lo}); there is nothing to segment")


# ---- writing ------------------------------------------------------------------------------------
def refuse_overwrite(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise a clear error when ``path`` exists and the user did not pass ``--overwrite``."""
    if Path(path).exists() and not overwrite:
        raise SegXAIError(f"{path} exists; pass --overwrite to replace it, or choose another output folder")


def partial_path(path: str | os.PathLike) -> Path:
    """A hidden sibling name with the same ending, to write to before an atomic rename."""
    path = Path(path)
    base, suffix = split_suffix(path.name)
    return path.with_name(f".{base}.partial{os.getpid()}{suffix or path.suffix}")


def write_atomically(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` to a hidden partial file beside ``path``, then rename it over ``path``: an interrupt never leaves
    half a file, and the partial file is removed when ``write`` fails."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_sitk(image: sitk.Image, path: str | os.PathLike, overwrite: bool = False, compress: bool = True) -> Path:
    """Write atomically: to a hidden partial file, then rename, so an interrupt never leaves half a file."""
    path = Path(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress))


def json_safe(value):
    """Plain JSON values: numpy scalars/arrays to Python, NaN and ±inf to None (JSON has neither), others to str."""
    import math

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)  # paths, devices, enums: their readable form


def write_json_atomic(data, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``data`` as indented JSON through a partial file and a rename; refuses to overwrite unless told."""
    import json

    path = Path(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n"))


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a `Volume` as NIfTI, NRRD or MHA/MHD (chosen by the file ending)."""
    _, suffix = split_suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise SegXAIError(f"cannot write {path}: end it with .nii.gz, .nii, .nrrd or .mha (single-file formats)")
    return write_sitk(volume.to_sitk(), path, overwrite=overwrite)
