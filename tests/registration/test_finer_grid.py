"""The deformable stage's last steps on a finer grid (:mod:`nnreg.inference.finer_grid`): a 1 mm fixed image is
registered on a 2 mm working grid and finished on a 1 mm grid that shares the working grid's box; the files still
follow the Learn2Reg and ITK conventions."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnreg.alignment.grids import pooled_geometry, subdivided_geometry, voxel_centres, working_geometry
from nnreg.dataset.image_io import Geometry
from nnreg.inference.finer_grid import FinerGridSettings, refine_on_finer_grid
from nnreg.inference.instance_optimization import InstanceOptimization, exponential_field
from nnreg.losses import gradient_l2
from nnreg.registration.pipeline import FINER_CORRECTION, FINER_GRID, RegistrationSettings
from nnreg.registration.run import RunRequest, run_registration
from nnreg.utilities.errors import ConfigurationError
from tests.alignment.phantom import affine, phantom
from tests.registration.conftest import TRUTH, brain, itk_reproduction_error, read, write_pair

VELOCITY = {"parametrisation": "velocity", "lambda_reg": None}   # the stage as exp(v), the refinement's weight


def _one_millimetre(path: Path) -> None:
    """Rewrite the image at ``path`` on a 1 mm grid of the same box (linear)."""
    image = sitk.ReadImage(str(path))
    size = [int(round(n * s)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    reference = sitk.Image(size, image.GetPixelID())
    reference.SetSpacing((1.0, 1.0, 1.0))
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(tuple(o - (s - 1.0) / 2 for o, s in zip(image.GetOrigin(), image.GetSpacing())))
    sitk.WriteImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0), str(path))


def _affine_and_warp() -> sitk.Transform:
    """The registration tests' affine, then a smooth B-spline warp (up to ~3 mm) for the deformable stages."""
    reference, _ = phantom(0)
    warp = sitk.BSplineTransformInitializer(reference, [3, 3, 3])
    coefficients = np.random.default_rng(5).uniform(-3.0, 3.0, len(warp.GetParameters()))
    warp.SetParameters([float(c) for c in coefficients])
    return sitk.CompositeTransform([affine(*TRUTH), warp])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("finer")
    fixed, moving, labels = write_pair(folder / "inputs", moving_transform=_affine_and_warp())
    _one_millimetre(fixed)
    out = {}
    for name, steps, correction in (("finer", FINER_GRID.steps, FINER_CORRECTION.steps),
                                    ("velocity_only", FINER_GRID.steps, 0), ("working", 0, 0),
                                    ("correction_only", 0, FINER_CORRECTION.steps)):
        target = folder / name
        run_registration(RunRequest(fixed=str(fixed), moving=str(moving), output=str(target), finer_steps=steps,
                                    correction_steps=correction, threads=1))
        out[name] = {"fixed": fixed, "moving": moving, "labels": labels, "out": target}
    return out


def test_the_registration_ends_on_the_finer_grid(runs) -> None:
    log = (runs["finer"]["out"] / "register.log").read_text()
    assert "finer grid [80, 96, 80] at 1 mm: " in log
    assert "finer grid" not in (runs["working"]["out"] / "register.log").read_text()
    similarity = json.loads((runs["finer"]["out"] / "register.json").read_text())["similarity"]
    assert similarity["ncc_finer_grid"] > similarity["ncc_finer_grid_start"]


def test_a_displacement_correction_follows_the_velocity_stage(runs) -> None:
    """After the finer grid's velocity steps, ``--correction-steps`` of a displacement correction on the same grid
    (logged, raising the local NCC the velocity stage reached); 0 leaves the velocity stage's field."""
    log = (runs["finer"]["out"] / "register.log").read_text()
    assert f"correction at 1 mm: {FINER_CORRECTION.steps} steps, local NCC " in log
    assert "correction" not in (runs["velocity_only"]["out"] / "register.log").read_text()
    corrected, velocity_only = (json.loads((runs[name]["out"] / "register.json").read_text())["similarity"]
                                for name in ("finer", "velocity_only"))
    assert corrected["ncc_finer_grid_start"] == pytest.approx(velocity_only["ncc_finer_grid_start"], abs=1e-6)
    assert corrected["ncc_finer_grid"] > velocity_only["ncc_finer_grid"] + 1e-4
    fields = [sitk.GetArrayFromImage(sitk.ReadImage(str(runs[name]["out"] / "field.nii.gz")))
              for name in ("finer", "velocity_only")]
    assert float(np.abs(fields[0] - fields[1]).max()) > 0.05


def test_a_correction_alone_goes_on_from_the_working_grid(runs) -> None:
    """``--finer-steps 0 --correction-steps N``: no velocity steps on the finer grid, but the correction runs there
    (it was skipped with the whole stage) and raises the local NCC the working grid's field has at 1 mm."""
    log = (runs["correction_only"]["out"] / "register.log").read_text()
    assert "finer grid [80, 96, 80] at 1 mm: 0 steps" in log
    assert f"correction at 1 mm: {FINER_CORRECTION.steps} steps, local NCC " in log
    similarity = json.loads((runs["correction_only"]["out"] / "register.json").read_text())["similarity"]
    assert similarity["ncc_finer_grid"] > similarity["ncc_finer_grid_start"] + 1e-4


def test_the_command_line_defaults_are_the_settings() -> None:
    """``nnreg_register``'s --finer-steps / --correction-steps defaults are the pipeline's (the CLI module keeps
    literal defaults so that --help imports no torch)."""
    from click.testing import CliRunner

    from nnreg.cli.register import main

    text = CliRunner().invoke(main, ["--help"], terminal_width=200).output
    finer = text.split("--finer-steps", 1)[1].split("--correction-steps", 1)
    assert f"[default: {FINER_GRID.steps};" in finer[0]
    assert f"[default: {FINER_CORRECTION.steps};" in finer[1].split("--affine-only", 1)[0]
    assert RegistrationSettings().correction == FINER_CORRECTION and FINER_CORRECTION.parametrisation == "displacement"


def test_finer_grid_outputs_keep_the_conventions(runs) -> None:
    error, moving_range = itk_reproduction_error(runs["finer"])
    assert error <= 1e-3 * moving_range
    fixed, _ = read(runs["finer"]["fixed"])
    warped, _ = read(runs["finer"]["out"] / "warped.nii.gz")
    working, _ = read(runs["working"]["out"] / "warped.nii.gz")
    inside = brain(fixed)
    finer_corr = np.corrcoef(warped[inside], fixed[inside])[0, 1]
    working_corr = np.corrcoef(working[inside], fixed[inside])[0, 1]
    assert finer_corr > 0.9 and finer_corr >= working_corr - 0.002, (finer_corr, working_corr)


def test_subdivided_grid_shares_the_box() -> None:
    """Pooling the subdivided grid by the same factor gives the grid back; its voxel centres average to the coarse
    ones (the box convention of ``resize_field``)."""
    geometry = working_geometry(Geometry((7, 5, 6), (1.3, 0.9, 1.1), (3.0, -2.0, 5.0),
                                         (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)), 2.0)
    fine = subdivided_geometry(geometry, 3)
    back = pooled_geometry(fine, 3)
    assert back.shape == geometry.shape
    np.testing.assert_allclose(back.origin, geometry.origin, atol=1e-9)
    np.testing.assert_allclose(back.spacing, geometry.spacing)
    centres = voxel_centres(fine).reshape(geometry.shape[0], 3, geometry.shape[1], 3, geometry.shape[2], 3, 3)
    np.testing.assert_allclose(centres.mean(axis=(1, 3, 5)), voxel_centres(geometry), atol=1e-9)


@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0, 1.0), 2), ((2.0, 2.0, 2.0), 1), ((1.2, 1.0, 1.5), 2),
                                               ((0.6, 0.6, 0.6), 2), ((0.6, 1.0, 1.0), 2), ((1.5, 1.5, 1.5), 1)])
def test_the_finer_grid_factor(spacing, expected) -> None:
    """Sub-millimetre images end on a 1 mm grid by default (FINEST_DEFAULT_SPACING); a final spacing asked for is
    honoured."""
    assert RegistrationSettings().finer_grid_factor(spacing, 2.0) == expected
    assert RegistrationSettings(final_spacing=0.6).finer_grid_factor(spacing, 2.0) == 3
    assert RegistrationSettings(final_spacing=0.5).finer_grid_factor(spacing, 1.0) == 2
    off = RegistrationSettings(finer_grid=FinerGridSettings(steps=0))
    assert off.finer_grid_factor(spacing, 2.0) == 1
    correction_only = RegistrationSettings(finer_grid=replace(FINER_GRID, steps=0))
    assert correction_only.correction_applies() and correction_only.finer_grid_factor(spacing, 2.0) == expected
    both_off = replace(correction_only, correction=replace(FINER_CORRECTION, steps=0))
    assert not both_off.correction_applies() and both_off.finer_grid_factor(spacing, 2.0) == 1


def test_the_stage_returns_its_best_iterate_and_checks_settings() -> None:
    torch.manual_seed(0)
    fixed = torch.zeros(1, 1, 16, 16, 16)
    fixed[:, :, 3:13, 3:13, 3:13] = torch.rand(1, 1, 10, 10, 10)
    moving = torch.roll(fixed, 1, dims=2)
    velocity = torch.zeros(1, 3, 8, 8, 8)
    settings = InstanceOptimization(steps=1, lambda_reg=0.1, integration_steps=3)
    field, report = refine_on_finer_grid(fixed, moving, velocity, settings, FinerGridSettings(steps=6, lr=0.2, **VELOCITY))
    assert report.steps_run >= 1 and report.final_loss <= report.initial_loss
    torch.testing.assert_close(field, exponential_field(report.velocity, (16, 16, 16), 3))
    unchanged, off = refine_on_finer_grid(fixed, moving, velocity, settings, FinerGridSettings(steps=0))
    assert off.steps_run == 0 and float(unchanged.abs().max()) == 0.0
    for bad in ({"steps": -1}, {"lr": 0.0}, {"ncc_window": 4}, {"lambda_reg": -1.0}):
        with pytest.raises(ConfigurationError):
            FinerGridSettings(**bad)


def test_the_stage_has_its_own_regulariser_weight() -> None:
    """``lambda_reg`` replaces the refinement's weight in this stage only: a huge one keeps the velocity smoother
    than the refinement's own weight does (and None keeps the refinement's)."""
    torch.manual_seed(0)
    fixed = torch.zeros(1, 1, 16, 16, 16)
    fixed[:, :, 3:13, 3:13, 3:13] = torch.rand(1, 1, 10, 10, 10)
    moving = torch.roll(fixed, 1, dims=2)
    settings = InstanceOptimization(steps=1, lambda_reg=0.1, integration_steps=3)
    roughness = {}
    for weight in (None, 0.1, 1e4):
        _, report = refine_on_finer_grid(fixed, moving, torch.zeros(1, 3, 8, 8, 8), settings,
                                         FinerGridSettings(steps=6, lr=0.2, lambda_reg=weight,
                                                           parametrisation="velocity"))
        assert report.velocity is not None
        roughness[weight] = float(gradient_l2(report.velocity))
    assert roughness[None] == roughness[0.1]
    assert roughness[1e4] < 0.5 * roughness[0.1]


def test_the_stage_has_its_own_integration_steps() -> None:
    """``integration_steps`` replaces the refinement's scaling-and-squaring steps in this stage only: the returned
    field is ``exp(v)`` integrated with the stage's steps (None: the refinement's); a bad value is refused."""
    torch.manual_seed(0)
    fixed = torch.zeros(1, 1, 16, 16, 16)
    fixed[:, :, 3:13, 3:13, 3:13] = torch.rand(1, 1, 10, 10, 10)
    moving = torch.roll(fixed, 2, dims=2)
    settings = InstanceOptimization(steps=1, lambda_reg=0.1, integration_steps=5)
    for steps, expected in ((None, 5), (1, 1)):
        field, report = refine_on_finer_grid(fixed, moving, torch.zeros(1, 3, 8, 8, 8), settings,
                                             FinerGridSettings(steps=6, lr=0.4, integration_steps=steps,
                                                               **VELOCITY))
        assert report.velocity is not None and float(report.velocity.abs().max()) > 0.1
        torch.testing.assert_close(field, exponential_field(report.velocity, (16, 16, 16), expected))
        other = 1 if expected == 5 else 5
        assert not torch.allclose(field, exponential_field(report.velocity, (16, 16, 16), other))
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError, match="integration_steps"):
            FinerGridSettings(integration_steps=bad)
