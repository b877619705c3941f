"""``nnreg_apply`` against the predictor's own warped outputs, and ``nnreg_predict --inverse`` on tiny data."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnreg.cli.apply import main as apply_main
from nnreg.cli.predict import main as predict_main
from nnreg.dataset.image_io import Geometry, read_displacement, read_image, write_displacement, write_image
from nnreg.inference import ExportOptions, PairSpec, nnRegPredictor, predict_pairs
from nnreg.inference.apply import apply_field
from nnreg.networks import default_architecture
from nnreg.planning.plans import ConfigurationPlan
from nnreg.spatial import inverse_consistency
from tests.inference.helpers import (OracleNet, invoke_cli as _invoke, one_line_error as _one_line_error,
                                     planned_dataset, smooth_field, write_model_folder)

SHAPE = (32, 40, 32)          # the tiny dataset's grid; the configuration below is a pure crop of it


def _config() -> ConfigurationPlan:
    return ConfigurationPlan(
        data_identifier="t", spacing=[1.0] * 3, resampling_factor=[1.0] * 3, resampled_shape=list(SHAPE),
        crop_start=[0, 0, 0], shape=list(SHAPE), normalization={"scheme": "fixed_range", "lower": 0, "upper": 255},
        batch_size=1, architecture={})


@pytest.fixture(scope="module")
def predicted(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One pair predicted with a known smooth field, with every extra output."""
    images = sorted((tiny_dataset / "imagesVal").glob("*.nii.gz"))
    field = smooth_field(SHAPE, amplitude=2.0, seed=1)
    predictor = nnRegPredictor(num_threads=1).manual_initialization(OracleNet(field.transpose(3, 0, 1, 2)), _config())
    out = tmp_path_factory.mktemp("apply") / "out"
    options = ExportOptions(save_warped=True, labels_folder=tiny_dataset / "labelsVal", itk=True, inverse=True)
    predict_pairs(predictor, [PairSpec(images[0], images[1])], out, options, num_readers=0, num_writers=0,
                  progress=False)
    fix, mov = images[0].name[-16:-12], images[1].name[-16:-12]
    return {"out": out, "fixed": images[0], "moving": images[1], "labels": tiny_dataset / "labelsVal" / images[1].name,
            "disp": out / f"disp_{fix}_{mov}.nii.gz", "itk": out / "itk" / f"disp_{fix}_{mov}.nii.gz",
            "warped": out / "warped" / f"warped_{fix}_{mov}.nii.gz",
            "warped_labels": out / "warped_labels" / f"warped_{fix}_{mov}.nii.gz",
            "inverse": out / "inverse" / f"disp_{mov}_{fix}.nii.gz"}


def test_apply_agrees_bit_for_bit_with_the_predictor(predicted: dict[str, Path], tmp_path: Path) -> None:
    image_out, labels_out = tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz"
    apply_field(predicted["disp"], [predicted["moving"]], predicted["fixed"], image_out)
    apply_field(predicted["disp"], [predicted["labels"]], predicted["fixed"], labels_out)   # int16 -> nearest
    warped, geometry = read_image(image_out)
    expected, fixed_geometry = read_image(predicted["warped"])
    assert geometry == fixed_geometry and np.array_equal(warped, expected)
    assert np.abs(warped - read_image(predicted["moving"])[0]).max() > 1     # the field did move the image
    labels = nib.load(str(labels_out))
    assert labels.get_data_dtype() == nib.load(str(predicted["labels"])).get_data_dtype()   # the input's dtype
    assert np.array_equal(np.asarray(labels.dataobj), read_image(predicted["warped_labels"], dtype=np.int32)[0])


def test_cli_several_inputs_to_a_folder_and_the_itk_field(predicted: dict[str, Path], tmp_path: Path) -> None:
    _one_line_error(_invoke(apply_main, "-f", predicted["itk"], "-i", predicted["moving"], predicted["labels"],
                            "-r", predicted["fixed"], "-o", tmp_path / "folder"), "two inputs are named")
    labels_copy = tmp_path / "seg.nii.gz"
    shutil.copyfile(predicted["labels"], labels_copy)
    result = _invoke(apply_main, "-f", predicted["itk"], "-i", predicted["moving"], labels_copy,
                     "-r", predicted["fixed"], "-o", tmp_path / "folder")
    assert result.exit_code == 0, result.stderr
    image = read_image(tmp_path / "folder" / predicted["moving"].name)[0]
    labels = read_image(tmp_path / "folder" / "seg.nii.gz", dtype=np.int32)[0]
    # the mm field converted back to voxels differs from the challenge field by float rounding only
    assert np.abs(image - read_image(predicted["warped"])[0]).max() < 1e-2
    assert np.mean(labels == read_image(predicted["warped_labels"], dtype=np.int32)[0]) > 0.999
    result = _invoke(apply_main, "-f", predicted["disp"], "-i", predicted["moving"], "-r", predicted["fixed"],
                     "-o", tmp_path / "bspline.nii.gz", "--interpolation", "bspline")
    assert result.exit_code == 0, result.stderr
    bspline = read_image(tmp_path / "bspline.nii.gz")[0]
    assert np.corrcoef(bspline.ravel(), image.ravel())[0, 1] > 0.99


def test_zero_field_reproduces_the_image_for_every_interpolation(predicted: dict[str, Path], tmp_path: Path) -> None:
    moving, geometry = read_image(predicted["moving"])
    zero = tmp_path / "zero.nii.gz"
    write_displacement(np.zeros((*SHAPE, 3), np.float32), zero, geometry)
    for mode in ("linear", "bspline", "nearest"):
        apply_field(zero, [predicted["moving"]], predicted["moving"], tmp_path / f"{mode}.nii.gz", mode)
        assert np.allclose(read_image(tmp_path / f"{mode}.nii.gz")[0], moving, atol=1e-3), mode


def test_mismatch_and_unsafe_outputs_are_one_line(predicted: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.nii.gz"
    write_displacement(np.zeros((16, 20, 16, 3), np.float32), small)
    _one_line_error(_invoke(apply_main, "-f", small, "-i", predicted["moving"], "-r", predicted["fixed"],
                            "-o", tmp_path / "x.nii.gz"), "small.nii.gz", "does not match the fixed image's grid")
    array, geometry = read_image(predicted["fixed"])
    shifted = tmp_path / "FIX_0001_0000.nii.gz"
    write_image(array, Geometry(geometry.shape, geometry.spacing, (5.0, 0.0, 0.0), geometry.direction), shifted)
    _one_line_error(_invoke(apply_main, "-f", predicted["itk"], "-i", predicted["moving"], "-r", shifted,
                            "-o", tmp_path / "x.nii.gz"), "ITK field", "is not the fixed image's")
    _one_line_error(_invoke(apply_main, "-f", predicted["disp"], "-i", predicted["moving"], "-r", predicted["fixed"],
                            "-o", predicted["moving"]), "refusing to overwrite")
    _one_line_error(_invoke(apply_main, "-f", predicted["disp"], "-i", tmp_path / "missing.nii.gz",
                            "-r", predicted["fixed"], "-o", tmp_path / "x.nii.gz"), "input image not found")
    assert not list(tmp_path.glob("x*"))


def test_inverse_field_written_on_the_moving_grid(predicted: dict[str, Path]) -> None:
    forward = torch.from_numpy(read_displacement(predicted["disp"]).astype(np.float32)).permute(3, 0, 1, 2)[None]
    image = nib.load(str(predicted["inverse"]))
    assert image.shape == (*SHAPE, 3) and image.get_data_dtype() == np.float32
    assert np.allclose(image.affine, nib.load(str(predicted["moving"])).affine)
    inverse = torch.from_numpy(np.asarray(image.get_fdata(), np.float32)).permute(3, 0, 1, 2)[None]
    error = inverse_consistency(forward, inverse)
    assert error.forward_inverse_max < 0.01 and error.inverse_forward_mean < 0.05
    assert inverse_consistency(forward, -forward).forward_inverse_mean > 10 * error.forward_inverse_mean


def test_inverse_needs_one_grid(tiny_dataset: Path, tmp_path: Path) -> None:
    images = sorted((tiny_dataset / "imagesVal").glob("*.nii.gz"))
    array, geometry = read_image(images[1])
    moving = tmp_path / "MOV_0100_0000.nii.gz"
    write_image(array, Geometry(geometry.shape, geometry.spacing, (1.0, 0.0, 0.0), geometry.direction), moving)
    predictor = nnRegPredictor(num_threads=1).manual_initialization(OracleNet(np.zeros((3, *SHAPE), np.float32)),
                                                                    _config())
    from nnreg.utilities.errors import NnregError

    with pytest.raises(NnregError, match="--inverse needs the moving image on the fixed image's grid"):
        predict_pairs(predictor, [PairSpec(images[0], moving)], tmp_path / "out", ExportOptions(inverse=True),
                      num_readers=0, num_writers=0, progress=False)


def test_predict_cli_inverse_from_velocities_with_nnunet_flags(tmp_path: Path) -> None:
    root, plans = planned_dataset(tmp_path, n_train=5, n_val=2)
    folder = write_model_folder(tmp_path / "results", plans, "3d_fullres", folds=("0", "1"),
                                architecture=default_architecture(2, base_channels=8))
    out = tmp_path / "out"
    images = sorted((root / "imagesVal").glob("*.nii.gz"))
    args = ("--fixed", images[0], "--moving", images[1], "-o", out, "-m", folder, "-f", "0", "1", "--inverse",
            "-npp", "0", "-nps", "0", "--disable_progress_bar")
    result = _invoke(predict_main, *args)
    assert result.exit_code == 0, result.stderr
    assert "device cpu" in result.stderr and "fold(s) 0, 1" in result.stderr
    assert "inverse-consistency error" in result.stderr and "no velocity estimate" not in result.stderr
    fix, mov = images[0].name[-16:-12], images[1].name[-16:-12]
    assert [p.name for p in out.glob("disp_*.nii.gz")] == [f"disp_{fix}_{mov}.nii.gz"]
    assert [p.name for p in (out / "inverse").glob("disp_*.nii.gz")] == [f"disp_{mov}_{fix}.nii.gz"]
    again = _invoke(predict_main, *args[:-1], "--continue_prediction")
    assert again.exit_code == 0 and "1 skipped" in again.stdout
