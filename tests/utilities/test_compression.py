"""nnreg gzips the ``.nii.gz`` files it writes (``nnreg.utilities.compression``): the stream unzips, with zlib as
ITK and nibabel unzip it, to exactly the bytes the library writes uncompressed; the target appears only complete;
the same data give the same file; and the fast compressor (ISA-L, a dependency) is the one in use."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnreg.dataset.image_io import Geometry, read_displacement, read_image, write_displacement, write_image
from nnreg.utilities import compression
from nnreg.utilities.compression import write_gzipped, write_gzipped_bytes

GEOMETRY = Geometry((9, 7, 5), (1.2, 1.0, 1.5), (3.0, -4.0, 5.0), (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))


def _field() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((9, 7, 5, 3)).astype(np.float32)


def test_the_fast_compressor_is_in_use() -> None:
    assert compression.COMPRESSOR == "isal"
    assert compression.GzipFile.__module__.startswith("isal")


def test_field_unzips_to_nibabels_own_bytes_and_reads_back(tmp_path: Path) -> None:
    field = _field()
    write_displacement(field, tmp_path / "disp.nii.gz", GEOMETRY)
    write_displacement(field, tmp_path / "reference.nii", GEOMETRY)        # nibabel's uncompressed bytes
    packed = (tmp_path / "disp.nii.gz").read_bytes()
    assert packed[:2] == b"\x1f\x8b"
    assert zlib.decompressobj(wbits=31).decompress(packed) == (tmp_path / "reference.nii").read_bytes()
    np.testing.assert_array_equal(read_displacement(tmp_path / "disp.nii.gz"), field.astype(np.float64))
    np.testing.assert_allclose(nib.load(tmp_path / "disp.nii.gz").affine, nib.load(tmp_path / "reference.nii").affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disp.nii.gz", "reference.nii"]


def test_the_same_data_give_the_same_file(tmp_path: Path) -> None:
    field = _field()
    write_displacement(field, tmp_path / "a.nii.gz", GEOMETRY)
    write_displacement(field, tmp_path / "b.nii.gz", GEOMETRY)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    assert (tmp_path / "a.nii.gz").read_bytes()[4:8] == b"\x00" * 4          # MTIME: none


def test_itk_image_unzips_to_itks_bytes(tmp_path: Path) -> None:
    image = np.arange(9 * 7 * 5, dtype=np.float32).reshape(9, 7, 5)
    write_image(image, GEOMETRY, tmp_path / "image.nii.gz")
    back, geometry = read_image(tmp_path / "image.nii.gz")
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(geometry.direction, GEOMETRY.direction, atol=1e-6)
    reference = sitk.GetImageFromArray(image.transpose(2, 1, 0))
    reference.SetSpacing(GEOMETRY.spacing)
    reference.SetOrigin(GEOMETRY.origin)
    reference.SetDirection(GEOMETRY.direction)
    sitk.WriteImage(reference, str(tmp_path / "reference.nii"), False)
    assert gzip.decompress((tmp_path / "image.nii.gz").read_bytes()) == (tmp_path / "reference.nii").read_bytes()


def test_a_failed_write_leaves_no_target_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "old.nii.gz").write_bytes(b"the user's file")

    def fails(raw: Path) -> None:
        raw.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_gzipped(tmp_path / "new.nii.gz", fails)
    with pytest.raises(OSError, match="disk full"):
        write_gzipped(tmp_path / "old.nii.gz", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.nii.gz"]
    assert (tmp_path / "old.nii.gz").read_bytes() == b"the user's file"
    with pytest.raises(ValueError, match=r"\.gz"):
        write_gzipped(tmp_path / "plain.nii", lambda raw: None)
    with pytest.raises(ValueError, match=r"\.gz"):
        write_gzipped_bytes(tmp_path / "plain.nii", b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.nii.gz"]
