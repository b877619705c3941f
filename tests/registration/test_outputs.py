"""nnreg_register's files: the Learn2Reg field convention (scipy), the ITK round trip (SimpleITK), the inverse,
nearest-neighbour labels, and that registration actually registers."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnreg.dataset.image_io import read_displacement
from nnreg.evaluation.overlap import dice
from nnreg.evaluation.warp import warp_nearest
from tests.registration.conftest import brain as _brain
from tests.registration.conftest import itk_reproduction_error, read


def test_outputs_written(registered):
    names = {p.name for p in registered["out"].iterdir()}
    assert {"warped.nii.gz", "field.nii.gz", "transform0GenericAffine.mat", "transform1Warp.nii.gz",
            "transform1InverseWarp.nii.gz", "inverse_field.nii.gz", "inverse_warped.nii.gz", "warped_labels.nii.gz",
            "qc.png", "register.log", "register.json"} <= names
    assert not [n for n in names if ".tmp-" in n]


def test_field_convention_matches_scipy(registered):
    """warped(x) = moving(x + u(x)), x a fixed voxel, x + u(x) in the moving image's voxel indices."""
    fixed, _ = read(registered["fixed"])
    moving, _ = read(registered["moving"])
    warped, _ = read(registered["out"] / "warped.nii.gz")
    field = read_displacement(registered["out"] / "field.nii.gz")
    assert field.shape == fixed.shape + (3,)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij")) + field.transpose(3, 0, 1, 2)
    reference = ndimage.map_coordinates(moving.astype(np.float64), coords, order=1, mode="constant")
    brain = _brain(fixed)
    assert np.abs(warped - reference)[brain].max() <= 1e-3 * np.ptp(moving)


def test_itk_transforms_reproduce_the_warped_image(registered):
    """SimpleITK applying [affine, displacement] (last added first) gives nnreg's warped image."""
    error, moving_range = itk_reproduction_error(registered)
    assert error <= 1e-3 * moving_range


def test_registration_aligns_the_pair(registered):
    fixed, _ = read(registered["fixed"])
    moving, _ = read(registered["moving"])
    warped, _ = read(registered["out"] / "warped.nii.gz")
    brain = _brain(fixed)
    correlation = np.corrcoef(warped[brain], fixed[brain])[0, 1]
    assert correlation > 0.9, correlation


def test_labels_are_warped_by_nearest_neighbour_as_the_evaluator(registered):
    labels, _ = read(registered["labels"])
    warped_labels, _ = read(registered["out"] / "warped_labels.nii.gz")
    field = read_displacement(registered["out"] / "field.nii.gz")
    assert np.array_equal(warped_labels, warp_nearest(labels, field).astype(warped_labels.dtype))
    fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(registered["fixed"]))).transpose(2, 1, 0) > 0
    assert dice(fixed_labels.astype(int), (warped_labels > 0).astype(int), [1]) > 0.9


def test_inverse_transforms_undo_the_forward_ones(registered):
    """T_inv(T(p)) = p for fixed brain points (ITK composites), and the Learn2Reg inverse field maps back."""
    fixed, fixed_image = read(registered["fixed"])
    out = registered["out"]
    affine = sitk.ReadTransform(str(out / "transform0GenericAffine.mat"))
    forward = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(
        sitk.Cast(sitk.ReadImage(str(out / "transform1Warp.nii.gz")), sitk.sitkVectorFloat64))])
    inverse = sitk.CompositeTransform([sitk.DisplacementFieldTransform(
        sitk.Cast(sitk.ReadImage(str(out / "transform1InverseWarp.nii.gz")), sitk.sitkVectorFloat64)),
        affine.GetInverse()])
    index = np.argwhere(_brain(fixed))[::50]
    errors = []
    for i in index:
        p = fixed_image.TransformContinuousIndexToPhysicalPoint(i.tolist())
        errors.append(np.linalg.norm(np.subtract(inverse.TransformPoint(forward.TransformPoint(p)), p)))
    assert np.mean(errors) < 0.1 and np.max(errors) < 0.5, (np.mean(errors), np.max(errors))
    # Learn2Reg inverse on the moving grid: fixed index of moving voxel z; chain with the forward field.
    field = read_displacement(out / "field.nii.gz")
    inverse_field = read_displacement(out / "inverse_field.nii.gz")
    z = index + field[tuple(index.T)]                      # moving indices of fixed voxels x
    back = z + np.stack([ndimage.map_coordinates(inverse_field[..., c], z.T, order=1) for c in range(3)], axis=1)
    assert np.linalg.norm(back - index, axis=1).mean() < 0.2


def test_a_failing_writer_is_raised_after_the_others_finished(tmp_path, monkeypatch, caplog):
    """The files are written by several threads: one writer's error reaches the caller, the other files are whole
    and no temporary file is left."""
    import logging

    import pytest

    import nnreg.registration.outputs as outputs
    from nnreg.registration.run import RunRequest, run_registration
    from tests.registration.conftest import write_pair

    from nnreg.utilities.files import atomic_path

    fixed, moving, _ = write_pair(tmp_path / "inputs")
    original = outputs.write_image_fast

    def failing(array, geometry, path):
        if path.name == "warped.nii.gz":
            with atomic_path(path) as tmp:                 # half a file written, then the disk is full
                tmp.write_bytes(b"partial")
                raise OSError(f"disk full while writing {path}")
        original(array, geometry, path)

    def failing_labels(*args):
        raise OSError("labels failed too")

    monkeypatch.setattr(outputs, "write_image_fast", failing)
    monkeypatch.setattr(outputs, "_write_labels", failing_labels)
    out = tmp_path / "out"
    writer_log = logging.getLogger("nnreg.registration.outputs")    # its own handler: a CLI test before this one
    writer_log.addHandler(caplog.handler)                            # may have stopped nnreg's propagation
    try:
        with caplog.at_level(logging.ERROR, logger="nnreg.registration.outputs"), \
                pytest.raises(OSError, match="disk full"):
            run_registration(RunRequest(fixed=str(fixed), moving=str(moving), output=str(out), finer_steps=0,
                                        moving_labels=str(tmp_path / "inputs" / "moving_labels.nii.gz")))
    finally:
        writer_log.removeHandler(caplog.handler)
    assert "labels failed too" in caplog.text          # the second error is logged, not lost
    names = {p.name for p in out.iterdir()}
    assert {"field.nii.gz", "transform0GenericAffine.mat", "transform1Warp.nii.gz", "qc.png"} <= names
    assert "warped.nii.gz" not in names and not [n for n in names if ".tmp-" in n]
    assert read_displacement(out / "field.nii.gz").shape[-1] == 3


def test_the_fixed_grid_field_is_the_same_slab_by_slab(monkeypatch):
    """:func:`forward_on_fixed_grid` works through the fixed grid in slabs of the first axis (bounded float64
    temporaries): slabs of 1 and 5 rows (5 does not divide the 13 rows) give bitwise the one-pass result, on a rotated,
    anisotropic pair of grids with a working grid other than the fixed one; :func:`voxel_centres` of a slab is
    bitwise those rows of the whole array."""
    import math

    import torch

    from nnreg.alignment.affine import AffineResult
    from nnreg.alignment.grids import voxel_centres
    from nnreg.dataset.image_io import Geometry
    from nnreg.registration import transforms
    from nnreg.registration.pipeline import Registration
    from nnreg.utilities import slabs

    c, s = math.cos(0.4), math.sin(0.4)
    fixed = Geometry((13, 9, 11), (1.2, 0.9, 1.5), (3.0, -4.0, 2.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    working = Geometry((8, 6, 9), (2.0, 1.5, 1.8), (2.0, -5.0, 1.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    moving = Geometry((16, 11, 13), (1.0, 1.4, 1.1), (-2.0, 1.0, 5.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))
    affine = AffineResult(np.array([[1.02, 0.05, -0.03], [-0.04, 0.97, 0.08], [0.02, -0.06, 1.05]]),
                          np.array([4.0, -1.0, 6.0]), np.array([1.5, -2.5, 0.7]), 0.0)
    field = torch.from_numpy(np.random.default_rng(5).normal(0.0, 1.5, (1, 3, *working.shape)))
    registration = Registration(affine, working, field, torch.zeros(1), torch.zeros(1), 1.0)
    monkeypatch.setattr(slabs, "SLAB_POINTS", 10**9)
    whole = transforms.forward_on_fixed_grid(registration, fixed, moving)
    assert np.abs(whole[1]).max() > 1.0
    for rows in (1, 5):
        monkeypatch.setattr(slabs, "SLAB_POINTS", rows * fixed.shape[1] * fixed.shape[2])
        for sliced, one_pass in zip(transforms.forward_on_fixed_grid(registration, fixed, moving), whole):
            assert sliced.dtype == np.float32 and np.array_equal(sliced, one_pass)
    np.testing.assert_array_equal(voxel_centres(fixed, slice(4, 9)), voxel_centres(fixed)[4:9])


def test_the_warped_image_is_the_same_slab_by_slab(monkeypatch):
    """The warped image and labels (``_sample``) are sampled in slabs of the first axis: bitwise the one-pass values
    for slabs of 1 and 5 rows, and (trilinear) scipy's ``map_coordinates`` of ``x + u(x)`` with zeros outside (its
    ``grid-constant`` mode)."""
    from nnreg.evaluation.warp import sample_coordinates
    from nnreg.registration import outputs
    from nnreg.utilities import slabs

    rng = np.random.default_rng(2)
    image = rng.random((13, 9, 11)).astype(np.float32)
    field = rng.normal(0.0, 2.0, (13, 9, 11, 3)).astype(np.float32)
    monkeypatch.setattr(slabs, "SLAB_POINTS", 10**9)
    whole = {mode: outputs._sample(image, field, mode) for mode in ("bilinear", "nearest")}
    reference = ndimage.map_coordinates(image.astype(np.float64), sample_coordinates(field), order=1,
                                      mode="grid-constant")
    np.testing.assert_allclose(whole["bilinear"], reference, atol=1e-5)
    for rows in (1, 5):
        monkeypatch.setattr(slabs, "SLAB_POINTS", rows * 9 * 11)
        for mode, one_pass in whole.items():
            assert np.array_equal(outputs._sample(image, field, mode), one_pass)
    np.testing.assert_array_equal(sample_coordinates(field[4:9], first_row=4), sample_coordinates(field)[:, 4:9])


def test_a_uint8_label_map_is_written_back_as_uint8(tmp_path):
    from nnreg.registration.run import RunRequest, run_registration
    from tests.registration.conftest import write_pair

    fixed, moving, labels = write_pair(tmp_path / "inputs")
    image = sitk.ReadImage(str(labels))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), str(labels))
    run_registration(RunRequest(fixed=str(fixed), moving=str(moving), output=str(tmp_path / "out"),
                                moving_labels=str(labels), affine_only=True))
    written = sitk.ReadImage(str(tmp_path / "out" / "warped_labels.nii.gz"))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= set(np.unique(sitk.GetArrayFromImage(image)))
