"""Volume IO: exact round trips through every format on awkward geometries, RAS convention, DICOM, errors."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk
from SegXAILib.errors import SegXAIError
from SegXAILib.volume import LPS_TO_RAS, Volume, read_volume, stem, write_volume

FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_is_exact_on_awkward_geometries(tmp_path, awkward_geometries, ct_like, suffix):
    for name, spacing, direction, origin in awkward_geometries:
        image = make_sitk(ct_like, spacing, direction, origin)
        src = tmp_path / f"in{suffix}"
        sitk.WriteImage(image, str(src))
        vol = read_volume(src)
        # the matrix is SimpleITK's geometry converted to RAS
        expected = np.eye(4)
        expected[:3, :3] = np.asarray(direction) @ np.diag(spacing)
        expected[:3, 3] = origin
        assert np.allclose(vol.ijk_to_ras, LPS_TO_RAS @ expected, atol=1e-5), name
        out = tmp_path / f"out_{name.replace(' ', '_')}{suffix}"
        write_volume(vol, out)
        back = read_volume(out)
        assert back.same_geometry(vol, atol=1e-6), (name, back.ijk_to_ras - vol.ijk_to_ras)
        assert np.array_equal(back.array, vol.array)
        assert back.array.dtype == vol.array.dtype


def test_array_is_kji_like_slicer(tmp_path):
    arr = np.zeros((3, 4, 5), dtype=np.int16)  # K, J, I
    arr[2, 1, 4] = 7
    image = make_sitk(arr, (1, 1, 1), np.eye(3), (0, 0, 0))
    assert image.GetSize() == (5, 4, 3)
    sitk.WriteImage(image, str(tmp_path / "a.nrrd"))
    vol = read_volume(tmp_path / "a.nrrd")
    assert vol.shape == (3, 4, 5) and vol.array[2, 1, 4] == 7
    # voxel (i=4, j=1, k=2) sits at LPS (4, 1, 2) = RAS (-4, -1, 2)
    assert np.allclose(vol.ijk_to_ras @ [4, 1, 2, 1], [-4, -1, 2, 1])


def test_ras_stored_nifti_from_shared_data(data_dir):
    vol = read_volume(data_dir / "totalseg_example" / "ct.nii.gz")
    assert vol.shape == (112, 101, 122)
    # stored RAS: ITK direction diag(-1, -1, 1) in LPS means i runs to +R and j to +A
    assert np.allclose(np.diag(vol.ijk_to_ras)[:3], [3.0, 3.0, 3.0])
    assert abs(vol.voxel_volume_ml - 0.027) < 1e-9


def test_dicom_series_folder(data_dir, tmp_path):
    vol = read_volume(data_dir / "totalseg_dicom" / "dicom")
    assert vol.shape == (20, 512, 512)
    assert np.allclose(vol.spacing, [0.9765625, 0.9765625, 2.0])
    label = read_volume(data_dir / "totalseg_dicom" / "liver.nii.gz")
    assert label.same_geometry(vol, atol=1e-3)
    write_volume(vol, tmp_path / "series.nrrd")
    assert read_volume(tmp_path / "series.nrrd").same_geometry(vol)


def test_stem():
    assert stem("a/b/ct.nii.gz") == "ct"
    assert stem("x.seg.nrrd") == "x"
    assert stem("dicom") == "dicom"


def test_write_refuses_to_overwrite(tmp_path, ct_like):
    vol = Volume(ct_like, np.eye(4))
    path = write_volume(vol, tmp_path / "a.nii.gz")
    before = path.read_bytes()
    with pytest.raises(SegXAIError, match="--overwrite"):
        write_volume(Volume(ct_like * 0, np.eye(4)), path)
    assert path.read_bytes() == before
    write_volume(Volume(ct_like * 0, np.eye(4)), path, overwrite=True)
    assert read_volume(path).array.max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]  # no partial file left


def _text(path):
    path.write_text("hello, not an image")
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: _text(d / "text.nii.gz"), "could not read"),
        (lambda d: sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(d / "flat.nrrd")) or d / "flat.nrrd", "2D"),
        (lambda d: sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(d / "t.nii.gz")) or d / "t.nii.gz", "4D"),
        (lambda d: sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(d / "v.mha")) or d / "v.mha", "values per voxel"),
        (lambda d: d, "no DICOM series"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(SegXAIError, match=message) as info:
        read_volume(path)
    assert "\n" not in str(info.value)
