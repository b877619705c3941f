"""What ``nnreg_register`` and ``nnreg_apply`` check before any work, and how they treat the files they are given:
outputs on one path, unwritable or blocked outputs, a bad label map, a field applied to images of another grid, the
deformable half of an ITK transform, an ``-o`` that is the field itself."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from nnreg.cli.apply import main as apply_main
from nnreg.cli.register import main as register_main
from nnreg.dataset.image_io import displacement_points_into
from tests.registration.conftest import one_line_error, read, write_pair


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_pair(tmp_path / "in")


def test_two_outputs_on_one_path_stop_before_any_work(pair, tmp_path: Path) -> None:
    fixed, moving, _ = pair
    same = tmp_path / "out" / "x.nii.gz"
    one_line_error(CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "--warped",
                                                       str(same), "--field", str(same)]),
                    "x.nii.gz", "both be written")
    prefix = tmp_path / "out" / "t"
    one_line_error(CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "--transform",
                                                       str(prefix), "--warped", f"{prefix}1Warp.nii.gz"]),
                    "t1Warp.nii.gz", "both be written")
    assert _files(tmp_path / "out") == []


def test_a_file_in_the_way_of_an_output_folder_is_one_line(pair, tmp_path: Path) -> None:
    fixed, moving, _ = pair
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    one_line_error(CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "--warped",
                                                       str(blocker / "w.nii.gz")]), "in the way")
    assert blocker.read_text() == "mine"


def test_a_missing_label_map_stops_before_any_output(pair, tmp_path: Path) -> None:
    fixed, moving, _ = pair
    out = tmp_path / "out"
    one_line_error(CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "-o", str(out),
                                                       "--moving-labels", str(tmp_path / "nope.nii.gz")]),
                    "nope.nii.gz", "not found")
    assert _files(out) == []


def test_float_label_maps_are_rounded_and_fractions_refused(pair, tmp_path: Path) -> None:
    """0.9999 is label 1 (a cast would make it 0); 0.5 is no label at all."""
    fixed, moving, labels = pair
    array, image = read(labels)
    assert set(np.unique(array)) >= {0, 1, 2}
    almost = tmp_path / "almost.nii.gz"
    nib.save(nib.Nifti1Image(array.astype(np.float32) - 1e-4 * (array > 0), nib.load(str(labels)).affine),
             str(almost))
    out = tmp_path / "out"
    result = CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "-o", str(out),
                                                "--moving-labels", str(almost), "--affine-only"])
    assert result.exit_code == 0, result.output
    warped = read(out / "warped_labels.nii.gz")[0]
    assert set(np.unique(warped)) == set(np.unique(array))
    half = tmp_path / "half.nii.gz"
    nib.save(nib.Nifti1Image(array.astype(np.float32) * 0.5, nib.load(str(labels)).affine), str(half))
    one_line_error(CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "-o",
                                                       str(tmp_path / "out2"), "--moving-labels", str(half)]),
                    "half.nii.gz", "non-integer")
    assert _files(tmp_path / "out2") == []


def test_affine_only_logs_no_nan(pair, tmp_path: Path) -> None:
    fixed, moving, _ = pair
    result = CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "--field",
                                                str(tmp_path / "f.nii.gz"), "--affine-only"])
    assert result.exit_code == 0, result.output
    assert not re.search(r"\bnan\b", result.output.lower()) and "deformable: skipped" in result.output


def test_stale_temporaries_of_a_killed_run_are_removed(pair, tmp_path: Path) -> None:
    fixed, moving, _ = pair
    out = tmp_path / "out"
    out.mkdir()
    from nnreg.utilities.files import host_token

    stale = out / f"qc.tmp-{host_token()}-999999999-abcd1234.png"    # a pid that cannot run
    stale.write_bytes(b"")
    mine = out / "notes.tmp-draft.txt"
    mine.write_text("mine")
    result = CliRunner().invoke(register_main, ["--fixed", str(fixed), "--moving", str(moving), "-o", str(out),
                                                "--affine-only"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and mine.read_text() == "mine"


def test_apply_reproduces_the_warped_image_of_a_pair_on_two_grids(registered: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """nnreg_register's field points into the moving image's own voxels (its grid is permuted and anisotropic
    here): nnreg_apply samples the moving image and its labels there, as the registration did."""
    field = registered["out"] / "field.nii.gz"
    assert displacement_points_into(field) == tuple(read(registered["moving"])[1].GetSize())
    out = tmp_path / "applied"
    result = CliRunner().invoke(apply_main, ["-f", str(field), "-i", str(registered["moving"]),
                                             str(registered["labels"]), "-r", str(registered["fixed"]),
                                             "-o", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read(out / "moving.nii.gz")[0], read(registered["out"] / "warped.nii.gz")[0],
                               atol=1e-5)
    np.testing.assert_array_equal(read(out / "moving_labels.nii.gz")[0],
                                  read(registered["out"] / "warped_labels.nii.gz")[0])
    # an image on the fixed grid is not the moving image's: refused, nothing written
    one_line_error(CliRunner().invoke(apply_main, ["-f", str(field), "-i", str(registered["fixed"]), "-r",
                                                    str(registered["fixed"]), "-o", str(tmp_path / "x.nii.gz")]),
                    "points into the voxels")
    assert not (tmp_path / "x.nii.gz").exists()


def test_apply_refuses_the_deformable_half_of_an_itk_transform(registered: dict[str, Path], tmp_path: Path) -> None:
    one_line_error(CliRunner().invoke(apply_main, ["-f", str(registered["out"] / "transform1Warp.nii.gz"), "-i",
                                                    str(registered["moving"]), "-r", str(registered["fixed"]),
                                                    "-o", str(tmp_path / "x.nii.gz")]),
                    "deformable part", "transform0GenericAffine.mat")


def test_apply_never_overwrites_its_field_and_checks_every_input_first(registered: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    field = tmp_path / "field.nii.gz"
    field.write_bytes((registered["out"] / "field.nii.gz").read_bytes())
    before = field.read_bytes()
    one_line_error(CliRunner().invoke(apply_main, ["-f", str(field), "-i", str(registered["moving"]), "-r",
                                                    str(registered["fixed"]), "-o", str(field)]),
                    "refusing to overwrite")
    assert field.read_bytes() == before
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 6, 6, 6), np.float32)), str(four))
    out = tmp_path / "several"
    one_line_error(CliRunner().invoke(apply_main, ["-f", str(field), "-i", str(registered["moving"]), str(four),
                                                    "-r", str(registered["fixed"]), "-o", str(out)]),
                    "four.nii.gz", "3D")
    assert _files(out) == []
