"""A registered phantom pair shared by the registration tests (written once per session: tiny, a few seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnreg.registration.run import RunRequest, run_registration
from tests.alignment.phantom import affine, moved, phantom, reoriented

TRUTH = ((8.0, -6.0, 7.0), (1.06, 0.95, 1.0), (5.0, -4.0, 3.0))


def write_pair(folder: Path, moving_transform=None, reorient: bool = False, intensity=None) -> tuple[Path, Path, Path]:
    """fixed.nii.gz, moving.nii.gz, moving_labels.nii.gz in ``folder`` (the moving one moved by ``TRUTH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    fixed, _ = phantom(0)
    moving, labels = phantom(0)
    transform = moving_transform or affine(*TRUTH)
    moving, labels = moved(moving, transform), moved(labels, transform, labels=True)
    if reorient:
        moving, labels = reoriented(moving, (1.2, 1.0, 1.5)), reoriented(labels, (1.2, 1.0, 1.5), labels=True)
    if intensity is not None:
        moving = intensity(moving)
    paths = folder / "fixed.nii.gz", folder / "moving.nii.gz", folder / "moving_labels.nii.gz"
    for image, path in zip((fixed, moving, labels), paths):
        sitk.WriteImage(image, str(path))
    return paths


@pytest.fixture(scope="session")
def registered(tmp_path_factory) -> dict[str, Path]:
    """The phantom pair with the moving image on a permuted, anisotropic grid, registered with every output."""
    folder = tmp_path_factory.mktemp("register")
    fixed, moving, labels = write_pair(folder / "inputs", reorient=True)
    out = folder / "out"
    run_registration(RunRequest(fixed=str(fixed), moving=str(moving), output=str(out), moving_labels=str(labels),
                                inverse=True))
    return {"fixed": fixed, "moving": moving, "labels": labels, "out": out}


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), image


def brain(fixed: np.ndarray) -> np.ndarray:
    """The fixed image's foreground, eroded by 2 voxels (where warped images are compared)."""
    from scipy import ndimage

    return ndimage.binary_erosion(fixed > 0, iterations=2)


def itk_reproduction_error(run: dict[str, Path]) -> tuple[float, float]:
    """(max |SimpleITK applying [affine, displacement] (last added first) - nnreg's warped image| inside the brain,
    the moving image's intensity range) for a run's ``fixed``, ``moving`` and ``out`` folder."""
    fixed, fixed_image = read(run["fixed"])
    moving_image = sitk.ReadImage(str(run["moving"]))
    warped, _ = read(run["out"] / "warped.nii.gz")
    affine = sitk.ReadTransform(str(run["out"] / "transform0GenericAffine.mat"))
    field = sitk.Cast(sitk.ReadImage(str(run["out"] / "transform1Warp.nii.gz")), sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])
    itk = sitk.GetArrayFromImage(sitk.Resample(moving_image, fixed_image, composite, sitk.sitkLinear, 0.0,
                                               sitk.sitkFloat32)).transpose(2, 1, 0)
    return float(np.abs(itk - warped)[brain(fixed)].max()), float(np.ptp(sitk.GetArrayViewFromImage(moving_image)))


def one_line_error(result, *words: str) -> None:
    """The command failed with exit code 2, printing exactly one ``nnreg: error:`` line that holds every word, and
    no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnreg: error:"), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
