"""``nnreg_predict --affine``: the affine pre-alignment before the network, and the whole transform as the field.

The pair: a tiny synthetic brain (the model fixtures' dataset) and the same brain moved by a known affine (20 degrees
about the first axis, a 4, 3 and 2 mm shift), so the field with ``--affine`` must warp the moving image back onto
the fixed one, checked against an independent ``scipy.ndimage.map_coordinates`` warp and against the known transform.
(At 10 degrees the default refinement alone already recovers most of the motion of these 32x40x32 images, MSE 162
against 64 with the affine; 20 degrees keeps a clear margin: 253 against 51, and 17 to 23 degrees behave alike.)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from nnreg.cli.predict import main
from nnreg.dataset.image_io import Geometry, displacement_points_into, read_displacement, read_image, write_image
from tests.alignment.phantom import affine as rotation_scale_shift
from tests.inference.helpers import invoke_cli, one_line_error, small_model

DEGREES, SHIFT = 20.0, (4.0, -3.0, 2.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny planned dataset, a one-fold model of it, and a pair whose moving image is the fixed one moved."""
    base = tmp_path_factory.mktemp("predict_affine")
    root, plans, model = small_model(base)
    fixed = sorted((root / "imagesVal").glob("*.nii.gz"))[0]
    image = sitk.ReadImage(str(fixed))
    transform = _moved_by(image)
    pair = base / "pair"
    pair.mkdir()
    moving = pair / "TINY_0100_0000.nii.gz"
    sitk.WriteImage(sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0), str(moving))
    labels = sitk.ReadImage(str(root / "labelsVal" / fixed.name))
    (pair / "labels").mkdir()
    sitk.WriteImage(sitk.Resample(labels, labels, transform, sitk.sitkNearestNeighbor, 0), str(pair / "labels" /
                                                                                             moving.name))
    return {"base": base, "root": root, "model": model, "results": base / "results", "fixed": fixed,
            "moving": moving, "labels": pair / "labels"}


def _moved_by(image: sitk.Image) -> sitk.AffineTransform:
    """The known transform: the moving image is ``fixed(t(p))`` (ITK pull), so the alignment ``T`` is ``t^-1``."""
    transform = rotation_scale_shift((DEGREES, 0.0, 0.0), (1.0, 1.0, 1.0), SHIFT)
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    return transform


def _predict(setup: dict[str, Path], out: Path, *extra: object) -> dict[str, np.ndarray]:
    result = invoke_cli(main, "--fixed", setup["fixed"], "--moving", setup["moving"], "-o", out, "-m", setup["model"],
                        "-f", "0", "--save-warped", "-npp", "0", "-nps", "0", *extra)
    assert result.exit_code == 0, result.output + result.stderr
    field_path = next(out.glob("disp_*.nii.gz"))
    warped, _ = read_image(out / "warped" / field_path.name.replace("disp_", "warped_"))
    return {"field": read_displacement(field_path), "warped": warped, "name": field_path.name, "log": result.stderr}


@pytest.fixture(scope="module")
def runs(setup: dict[str, Path]) -> dict[str, dict]:
    """The pair predicted with and without ``--affine`` (with ``--itk``, labels and the inverse for the former)."""
    base = setup["base"]
    return {"affine": _predict(setup, base / "with", "--affine", "--itk", "--inverse", "--warp-labels",
                               setup["labels"]),
            "plain": _predict(setup, base / "without")}


def _brain(fixed: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(fixed > 0, iterations=2)


def _inside(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Fixed voxels whose sample point ``x + u(x)`` lies inside the moving grid (at its very border scipy's
    ``constant`` mode and ITK give the outside value, nnreg's trilinear sampling fades to 0 over half a voxel)."""
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in field.shape[:3]], indexing="ij"), -1)
    at = identity + field
    return np.all((at >= 0) & (at <= np.asarray(shape) - 1), axis=-1)


def _matches_scipy(fixed: np.ndarray, moving: np.ndarray, field: np.ndarray, warped: np.ndarray) -> None:
    """``warped(x) = moving(x + u(x))`` (scipy, float64) inside the brain where the point lies in the moving grid."""
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"))
    reference = ndimage.map_coordinates(moving.astype(np.float64), identity + field.transpose(3, 0, 1, 2), order=1,
                                        mode="constant")
    brain = _brain(fixed)
    inside = brain & _inside(field, moving.shape)
    assert inside.sum() > 0.9 * brain.sum()
    assert np.abs(warped - reference)[inside].max() <= 1e-3 * np.ptp(moving)


def test_affine_warps_the_moving_image_back_much_better(setup, runs) -> None:
    fixed, _ = read_image(setup["fixed"])
    brain = _brain(fixed)
    mse = {k: float(np.mean((runs[k]["warped"] - fixed)[brain] ** 2)) for k in ("affine", "plain")}
    ncc = {k: float(np.corrcoef(runs[k]["warped"][brain], fixed[brain])[0, 1]) for k in ("affine", "plain")}
    assert mse["affine"] < 0.4 * mse["plain"], mse
    assert ncc["affine"] > 0.95 and ncc["affine"] > ncc["plain"] + 0.03, ncc


def test_field_convention_against_scipy_and_the_known_transform(setup, runs) -> None:
    """``warped(x) = moving(x + u(x))`` with the original moving image (scipy, float64), and ``x + u(x)`` is where
    the known transform puts the fixed voxel ``x`` in the moving image (up to the network's small correction)."""
    fixed, geometry = read_image(setup["fixed"])
    moving, _ = read_image(setup["moving"])
    field = runs["affine"]["field"]
    _matches_scipy(fixed, moving, field, runs["affine"]["warped"])
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"))
    brain = _brain(fixed)
    inverse = _moved_by(sitk.ReadImage(str(setup["fixed"]))).GetInverse()   # T = t^-1: fixed -> moving points
    spacing, origin = np.asarray(geometry.spacing), np.asarray(geometry.origin)   # identity direction
    points = identity.transpose(1, 2, 3, 0)[brain] * spacing + origin
    truth = np.array([inverse.TransformPoint(tuple(map(float, p))) for p in points])
    expected = (truth - origin) / spacing - identity.transpose(1, 2, 3, 0)[brain]
    error = np.linalg.norm(field[brain] - expected, axis=1)   # a wrong convention errs by about 2 |u|, not < 1
    assert np.median(error) < 1.0 and np.median(error) < 0.25 * np.median(np.linalg.norm(expected, axis=1)), \
        (np.median(error), np.median(np.linalg.norm(expected, axis=1)))


def test_itk_field_labels_inverse_and_the_affine_record(setup, runs) -> None:
    """The other outputs follow the whole transform: SimpleITK with the ITK field gives the warped image, the warped
    labels match the fixed labels, the inverse undoes the field, and affine/<name>.json records the affine."""
    out = setup["base"] / "with"
    name = runs["affine"]["name"]
    fixed_image, moving_image = sitk.ReadImage(str(setup["fixed"])), sitk.ReadImage(str(setup["moving"]))
    itk_field = sitk.Cast(sitk.ReadImage(str(out / "itk" / name)), sitk.sitkVectorFloat64)
    itk = sitk.GetArrayFromImage(sitk.Resample(moving_image, fixed_image, sitk.DisplacementFieldTransform(itk_field),
                                               sitk.sitkLinear, 0.0, sitk.sitkFloat32)).transpose(2, 1, 0)
    fixed, _ = read_image(setup["fixed"])
    brain = _brain(fixed)
    inside = brain & _inside(runs["affine"]["field"], fixed.shape)
    assert np.abs(itk - runs["affine"]["warped"])[inside].max() <= 1e-3 * np.ptp(fixed)

    fixed_labels, _ = read_image(setup["root"] / "labelsVal" / setup["fixed"].name, dtype=np.int32)
    warped_labels, _ = read_image(out / "warped_labels" / name.replace("disp_", "warped_"), dtype=np.int32)
    assert np.mean(warped_labels[brain] == fixed_labels[brain]) > 0.85

    field = runs["affine"]["field"]
    inverse = read_displacement(next((out / "inverse").glob("disp_*.nii.gz")))
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"))
    at = identity + field.transpose(3, 0, 1, 2)
    back = np.stack([ndimage.map_coordinates(inverse[..., c], at, order=1, mode="nearest") for c in range(3)], -1)
    assert np.median(np.linalg.norm(field + back, axis=-1)[brain]) < 0.1

    record = json.loads((out / "affine" / name.replace(".nii.gz", ".json")).read_text())
    assert record["similarity"] == "ncc" and record["description"].startswith("rotation ")
    assert abs(float(record["description"].split()[1]) - DEGREES) < 3.0, record["description"]
    assert record["overlap"] > 0.8 and np.asarray(record["homogeneous"]).shape == (4, 4)
    assert "affine" in runs["affine"]["log"] and "rotation" in runs["affine"]["log"]


def test_without_affine_the_output_is_unchanged(setup, runs) -> None:
    """The default path is the predictor's own field, bit for bit, and writes no affine record."""
    from nnreg.inference import nnRegPredictor
    from nnreg.inference.preparation import prepare_files

    predictor = nnRegPredictor().initialize_from_trained_model_folder(setup["model"], ["0"])
    pair = prepare_files(setup["fixed"], setup["moving"], predictor.configuration)
    field = predictor.predict_prepared(pair, predictor.settings_for_pair(setup["fixed"], setup["moving"]))
    assert np.array_equal(runs["plain"]["field"], field.astype(np.float64))
    assert not (setup["base"] / "without" / "affine").exists()


def test_dataset_pairs_in_workers_and_continue(setup, tmp_path: Path) -> None:
    """-i DATASET -d/-c/-f with reader and writer processes: one affine record per pair; --continue needs it."""
    out = tmp_path / "out"
    args = ("-i", setup["root"], "-o", out, "-d", "901", "-c", "3d_fullres", "-f", "0", "--results",
            setup["results"], "--affine", "-npp", "1", "-nps", "1")
    result = invoke_cli(main, *args)
    assert result.exit_code == 0, result.output + result.stderr
    fields = sorted(out.glob("disp_*.nii.gz"))
    pairs = json.loads((setup["root"] / "dataset.json").read_text())["validation"]
    assert len(fields) == len(pairs)
    for path in fields:
        assert read_displacement(path).shape == (32, 40, 32, 3)
        assert json.loads((out / "affine" / path.name.replace(".nii.gz", ".json")).read_text())["overlap"] > 0.5
    record = next((out / "affine").iterdir())
    record.unlink()
    again = invoke_cli(main, *args, "--continue")
    assert again.exit_code == 0 and "1 pair(s) written, 1 skipped" in again.output, again.output
    assert record.is_file()


def test_moving_image_on_another_grid(setup, tmp_path: Path) -> None:
    """A moving image on its own (coarser, shifted) grid: the field points into its voxels (scipy on its own array)
    and the ITK field still reproduces the warped image."""
    moving, geometry = read_image(setup["moving"])
    coarse = Geometry((22, 26, 22), (1.5, 1.6, 1.5), (-0.5, -1.0, 0.25), geometry.direction)
    from nnreg.inference.resample import resample_onto

    path = tmp_path / "TINY_0101_0000.nii.gz"
    write_image(resample_onto(moving, geometry, coarse), coarse, path)
    out = tmp_path / "out"
    result = invoke_cli(main, "--fixed", setup["fixed"], "--moving", path, "-o", out, "-m", setup["model"], "-f", "0",
                        "--affine", "--save-warped", "--itk", "-npp", "0", "-nps", "0")
    assert result.exit_code == 0, result.output + result.stderr
    name = next(out.glob("disp_*.nii.gz")).name
    field = read_displacement(out / name)
    warped, _ = read_image(out / "warped" / name.replace("disp_", "warped_"))
    own, _ = read_image(path)
    fixed, _ = read_image(setup["fixed"])
    _matches_scipy(fixed, own, field, warped)
    brain = _brain(fixed)
    inside = brain & _inside(field, own.shape)
    assert np.corrcoef(warped[brain], fixed[brain])[0, 1] > 0.8
    itk_field = sitk.Cast(sitk.ReadImage(str(out / "itk" / name)), sitk.sitkVectorFloat64)
    itk = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(path)), sitk.ReadImage(str(setup["fixed"])),
                                               sitk.DisplacementFieldTransform(itk_field), sitk.sitkLinear, 0.0,
                                               sitk.sitkFloat32)).transpose(2, 1, 0)
    assert np.abs(itk - warped)[inside].max() <= 1e-3 * np.ptp(own)
    # the header names the grid the field points into, so nnreg_apply samples the moving image where this run did
    assert displacement_points_into(out / name) == coarse.shape
    from nnreg.inference.apply import apply_field

    applied = apply_field(out / name, [path], setup["fixed"], tmp_path / "applied.nii.gz")
    np.testing.assert_allclose(read_image(applied[0])[0], warped, atol=1e-4 * np.ptp(own))
    # the ITK field too, with the original moving image: sampled once, where ITK samples it (not resampled first)
    applied = apply_field(out / "itk" / name, [path], setup["fixed"], tmp_path / "applied_itk.nii.gz")
    assert np.abs(read_image(applied[0])[0] - itk)[inside].max() <= 1e-4 * np.ptp(own)


def test_barely_overlapping_pair_is_one_line(setup, tmp_path: Path) -> None:
    """A small cube in a corner against the brain: no affine makes them overlap (Dice 0.15 here); one line naming
    the moving image, nothing written."""
    _, geometry = read_image(setup["fixed"])
    cube = np.zeros(geometry.shape, np.float32)
    cube[2:8, 2:8, 2:8] = 100.0 + 50.0 * np.random.default_rng(0).random((6, 6, 6))
    path = tmp_path / "TINY_0102_0000.nii.gz"
    write_image(cube, geometry, path)
    out = tmp_path / "out"
    result = invoke_cli(main, "--fixed", setup["fixed"], "--moving", path, "-o", out, "-m", setup["model"], "-f", "0",
                        "--affine")
    one_line_error(result, "TINY_0102_0000.nii.gz", "overlap only", "after the affine stage")
    assert "Traceback" not in result.output + result.stderr
    assert not list(out.glob("disp_*")) and not (out / "affine").exists()


def test_compose_affine_is_nnreg_registers_composition() -> None:
    """:func:`compose_affine` on rotated, anisotropic grids equals ``nnreg_register``'s
    :func:`forward_on_fixed_grid` with the deformable part given on the fixed grid (one convention for both)."""
    from nnreg.alignment.affine import AffineResult
    from nnreg.inference.affine_stage import compose_affine
    from nnreg.registration.pipeline import Registration
    from nnreg.registration.transforms import forward_on_fixed_grid
    from tests.inference.helpers import smooth_field

    c, s = math.cos(0.3), math.sin(0.3)
    fixed = Geometry((12, 14, 10), (1.2, 0.9, 1.5), (3.0, -4.0, 2.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    moving = Geometry((16, 11, 13), (1.0, 1.4, 1.1), (-2.0, 1.0, 5.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))
    matrix = np.array([[1.02, 0.05, -0.03], [-0.04, 0.97, 0.08], [0.02, -0.06, 1.05]])
    affine = AffineResult(matrix, np.array([4.0, -1.0, 6.0]), np.array([1.5, -2.5, 0.7]), 0.0)
    field = smooth_field(fixed.shape, amplitude=2.0, seed=3)
    registration = Registration(affine, fixed, torch.from_numpy(field).permute(3, 0, 1, 2)[None].double(),
                                torch.zeros(1), torch.zeros(1), 1.0)
    reference, _ = forward_on_fixed_grid(registration, fixed, moving)
    assert np.abs(compose_affine(field, fixed, moving, affine.homogeneous) - reference).max() < 1e-4


def test_affine_similarity_follows_the_modalities() -> None:
    """As ``nnreg_register``: local NCC (with histogram matching) for one LUMIR modality suffix, mutual information
    (without) when the suffixes differ."""
    from nnreg.inference.affine_stage import affine_settings

    same = affine_settings("a/X_0001_0000.nii.gz", "a/X_0002_0000.nii.gz")
    other = affine_settings("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz")
    assert (same.affine.similarity, same.histogram_matching) == ("ncc", True)
    assert (other.affine.similarity, other.histogram_matching) == ("mi", False)
