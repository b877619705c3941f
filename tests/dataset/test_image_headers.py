"""Image headers as ITK reads them: a sheared sform falls back to the qform (or is refused without one), a 3D volume
stored with a time axis of one is 3D, a folder is named as one; label maps stored as floats are rounded, not cast;
output locations are checked before any work."""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnreg.dataset.image_io import image_shape, read_image, read_label_map
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import check_output_targets

SHEARED = np.array([[2.0, 0.8, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _volume() -> np.ndarray:
    return np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)


def test_a_sheared_sform_without_a_qform_is_refused_as_itk_does(tmp_path: Path) -> None:
    path = tmp_path / "shear.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), SHEARED), str(path))
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))                       # ITK (and so ANTs) refuses it too
    with pytest.raises(NnregError, match="not orthogonal"):
        read_image(path)


def test_a_sheared_sform_falls_back_to_the_qform_as_itk_does(tmp_path: Path, caplog) -> None:
    reader_log = logging.getLogger("nnreg.dataset.image_io")
    reader_log.addHandler(caplog.handler)        # the CLI tests may have stopped nnreg's propagation
    try:
        _check_qform_fallback(tmp_path)
    finally:
        reader_log.removeHandler(caplog.handler)
    assert "qform" in caplog.text


def _check_qform_fallback(tmp_path: Path) -> None:
    path = tmp_path / "shear_q.nii.gz"
    image = nib.Nifti1Image(_volume(), SHEARED)
    qform = np.diag([1.5, 1.25, 1.0, 1.0])
    qform[:3, 3] = [5.0, 6.0, 7.0]
    image.set_qform(qform, code=1)
    image.set_sform(SHEARED, code=2)
    nib.save(image, str(path))
    _, geometry = read_image(path)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(geometry.spacing, itk.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(geometry.origin, itk.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(geometry.direction, itk.GetDirection(), atol=1e-6)


def test_a_time_axis_of_one_is_a_3d_image(tmp_path: Path) -> None:
    volume = _volume()
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(volume[..., None], np.eye(4)), str(path))
    array, geometry = read_image(path)
    np.testing.assert_array_equal(array, volume)
    assert geometry.shape == (6, 7, 5) and image_shape(path) == (6, 7, 5)
    mha = tmp_path / "t1.mha"
    sitk.WriteImage(sitk.JoinSeries(sitk.GetImageFromArray(volume.transpose(2, 1, 0))), str(mha))
    np.testing.assert_array_equal(read_image(mha)[0], volume)
    two = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([volume, volume], -1), np.eye(4)), str(two))
    for reader in (read_image, image_shape):
        with pytest.raises(NnregError, match="3D single-channel"):
            reader(two)


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    for reader in (read_image, image_shape):
        with pytest.raises(NnregError, match="is a folder"):
            reader(tmp_path)


def test_label_maps_stored_as_floats(tmp_path: Path) -> None:
    labels = np.zeros((6, 7, 5), np.float32)
    labels[1:3] = 0.9999
    labels[3:5] = 2.0001
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(path))
    array, _ = read_label_map(path)
    assert array.dtype == np.int32 and set(np.unique(array)) == {0, 1, 2}
    labels[0, 0, 0] = 1.5
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(path))
    with pytest.raises(NnregError, match=r"non-integer values \(e.g. 1.5\)"):
        read_label_map(path)


def test_output_targets(tmp_path: Path) -> None:
    check_output_targets([("a", tmp_path / "new" / "deeper" / "a.nii.gz")])
    assert (tmp_path / "new" / "deeper").is_dir()
    with pytest.raises(NnregError, match="a and b would both be written"):
        check_output_targets([("a", tmp_path / "x.nii.gz"), ("b", tmp_path / "sub" / ".." / "x.nii.gz")])
    with pytest.raises(NnregError, match="is a folder"):
        check_output_targets([("a", tmp_path / "new")])
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NnregError, match="in the way"):
        check_output_targets([("a", tmp_path / "file" / "x.nii.gz")])
    assert (tmp_path / "file").read_text() == "mine"


def test_two_grids_of_one_shape_and_spacing_read_differently() -> None:
    from nnreg.dataset.image_io import Geometry
    from nnreg.inference.resample import describe_grid

    a = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    b = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (2.0, 0.0, 0.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    first, second = describe_grid(a, b)
    assert first != second and "origin" in first and "direction" in second
    assert describe_grid(a, a) == ("[4, 5, 6] @ [1.0, 1.0, 1.0] mm", "[4, 5, 6] @ [1.0, 1.0, 1.0] mm")


@pytest.mark.parametrize("stored, values, expected", [
    (np.uint8, [0, 17, 255], np.uint8),        # kept: a uint8 map's warped copy stays uint8
    (np.int16, [0, 2035], np.int16),
    (np.uint16, [0, 60000], np.uint16),
    (np.int64, [0, 2035], np.int16),           # no 64-bit output: the smallest of int16 / int32 that holds the values
    (np.float32, [0, 3], np.int16),            # labels stored as floats
    (np.float32, [0, 70000], np.int32),
])
def test_warped_labels_keep_the_label_maps_integer_type(tmp_path: Path, stored, values, expected) -> None:
    from nnreg.dataset.image_io import label_storage_dtype

    array = np.zeros((4, 5, 6), stored)
    array.flat[:len(values)] = values
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4), dtype=stored), str(path))
    labels, _ = read_label_map(path)
    assert label_storage_dtype(path, labels) == np.dtype(expected)
