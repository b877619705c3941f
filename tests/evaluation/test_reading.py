"""Displacement files are read as the official evaluator reads them (float64, (3,H,W,D) moved last, .npz)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnreg.dataset.image_io import read_displacement, write_displacement
from nnreg.evaluation.config import EvalPair
from nnreg.evaluation.runner import displacement_stem, find_displacement
from nnreg.utilities.errors import NnregError


def field() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, 6, 7, 3)).astype(np.float32)


def test_nifti_is_float64_and_exact(tmp_path: Path) -> None:
    u = field()
    write_displacement(u, tmp_path / "d.nii.gz")
    read = read_displacement(tmp_path / "d.nii.gz")
    assert read.dtype == np.float64
    np.testing.assert_array_equal(read, u.astype(np.float64))


def test_channels_first_and_itk_vector_layouts(tmp_path: Path) -> None:
    u = field()
    nib.save(nib.Nifti1Image(np.moveaxis(u, -1, 0), np.eye(4)), str(tmp_path / "c.nii.gz"))
    np.testing.assert_array_equal(read_displacement(tmp_path / "c.nii.gz"), u)
    nib.save(nib.Nifti1Image(u[:, :, :, None, :], np.eye(4)), str(tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(read_displacement(tmp_path / "v.nii.gz"), u)


def test_npz_and_lookup_order(tmp_path: Path) -> None:
    """LUMIR 2024 looks for .npz before .nii.gz, and uses the short name for equal (or 0000/0001) modalities."""
    u = field()
    pair = EvalPair("./imagesVal/X_0002_0000.nii.gz", "./imagesVal/X_0001_0000.nii.gz")
    write_displacement(np.zeros_like(u), tmp_path / "disp_0002_0001.nii.gz")
    assert find_displacement(tmp_path, pair).name == "disp_0002_0001.nii.gz"
    np.savez(tmp_path / "disp_0002_0001.npz", arr_0=u)
    found = find_displacement(tmp_path, pair)
    assert found.name == "disp_0002_0001.npz"
    np.testing.assert_array_equal(read_displacement(found), u)
    assert displacement_stem(EvalPair("./a/X_0002_0000.nii.gz", "./a/X_0001_0001.nii.gz")) == "disp_0002_0001"
    assert displacement_stem(EvalPair("./a/X_0002_0001.nii.gz", "./a/X_0001_0000.nii.gz")) == \
        "disp_0002_0001_0001_0000"


@pytest.mark.parametrize("array, message", [
    (np.zeros((5, 6, 7, 2), np.float32), "found shape (5, 6, 7, 2)"),
    (np.full((5, 6, 7, 3), np.inf, np.float32), "NaN/inf"),
])
def test_bad_fields(tmp_path: Path, array: np.ndarray, message: str) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "b.nii.gz"))
    with pytest.raises(NnregError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_displacement(tmp_path / "b.nii.gz")
