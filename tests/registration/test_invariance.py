"""The same pair given in another orientation and spacing, or in another scanner's units (x4, bias, gamma),
registers to the same physical transform within 0.5 mm (mean over the fixed brain)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnreg.registration.run import RunRequest, run_registration
from tests.registration.conftest import read, write_pair


def _transform(out) -> sitk.Transform:
    affine = sitk.ReadTransform(str(out / "transform0GenericAffine.mat"))
    field = sitk.Cast(sitk.ReadImage(str(out / "transform1Warp.nii.gz")), sitk.sitkVectorFloat64)
    return sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])


def _register(folder, **pair) -> sitk.Transform:
    fixed, moving, _ = write_pair(folder, **pair)
    run_registration(RunRequest(fixed=str(fixed), moving=str(moving), transform=str(folder / "t")))
    return sitk.CompositeTransform([sitk.ReadTransform(str(folder / "t0GenericAffine.mat")),
                                    sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(
                                        str(folder / "t1Warp.nii.gz")), sitk.sitkVectorFloat64))])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    transform = _register(folder)
    fixed, image = read(folder / "fixed.nii.gz")
    points = [image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in np.argwhere(fixed > 0)[::20]]
    return transform, points


def _mean_difference(a: sitk.Transform, b: sitk.Transform, points) -> float:
    return float(np.mean([np.linalg.norm(np.subtract(a.TransformPoint(p), b.TransformPoint(p))) for p in points]))


def test_orientation_and_spacing_invariance(plain, tmp_path):
    transform, points = plain
    other = _register(tmp_path, reorient=True)
    assert _mean_difference(transform, other, points) < 0.5


def _scanner(image: sitk.Image) -> sitk.Image:
    """Another scanner's units: x4, a smooth multiplicative bias (+-20 %), gamma 0.7."""
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in values.shape], indexing="ij")
    bias = 1.0 + 0.2 * np.sin(1.3 * x + 0.5) * np.cos(0.9 * y - 0.3 * z)
    out = sitk.GetImageFromArray((4.0 * 200.0 * (values / 200.0) ** 0.7 * bias).astype(np.float32))
    out.CopyInformation(image)
    return out


def test_intensity_invariance(plain, tmp_path):
    transform, points = plain
    other = _register(tmp_path, intensity=_scanner)
    assert _mean_difference(transform, other, points) < 0.5
