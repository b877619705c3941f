"""The --itk field applied by SimpleITK's DisplacementFieldTransform gives nnreg's warp (non-trivial geometry)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnreg.dataset.image_io import Geometry, read_image
from nnreg.inference.export import ExportJob, ExportOptions, export_pair, pair_outputs, warp_image
from nnreg.inference.resample import to_sitk
from tests.inference.helpers import smooth_field

SHAPE = (24, 30, 20)


def _rotation(angle: float) -> tuple[float, ...]:
    c, s = np.cos(angle), np.sin(angle)
    return tuple(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).ravel())


def _sampled_inside(field: np.ndarray, shape: tuple[int, ...], margin: float = 0.0) -> np.ndarray:
    """Voxels whose sample point ``x + u(x)`` lies inside the moving grid: there both tools interpolate; outside,
    ITK returns the default value while grid_sample fades towards 0 over the last half voxel."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in field.shape[:3]], indexing="ij"), axis=-1) + field
    return np.all((grid >= margin) & (grid <= np.array(shape) - 1 - margin), axis=-1)


def _apply_itk(path: Path, moving: sitk.Image, reference: sitk.Image, nearest: bool = False) -> np.ndarray:
    field = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    out = sitk.Resample(moving, reference, transform, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def test_itk_field_reproduces_nnreg_warp(tmp_path: Path) -> None:
    geometry = Geometry(SHAPE, (1.5, 1.0, 2.0), (-10.0, 5.0, 3.0), _rotation(0.3))
    rng = np.random.default_rng(1)
    moving = ndimage.gaussian_filter(rng.uniform(0, 255, SHAPE), 2).astype(np.float32)
    field = smooth_field(SHAPE, amplitude=3.0, seed=5)
    outputs = pair_outputs(tmp_path, "A_0001_0000.nii.gz", "A_0002_0000.nii.gz")
    export_pair(ExportJob(outputs, ExportOptions(itk=True, save_warped=True), field, geometry, moving_on_fixed=moving))

    itk_field = sitk.ReadImage(str(outputs.itk))
    assert itk_field.GetNumberOfComponentsPerPixel() == 3 and itk_field.GetSize() == SHAPE
    np.testing.assert_allclose(itk_field.GetSpacing(), geometry.spacing)
    np.testing.assert_allclose(itk_field.GetDirection(), geometry.direction, atol=1e-6)

    moving_image = to_sitk(moving, geometry)
    by_itk = _apply_itk(outputs.itk, moving_image, moving_image)
    by_nnreg = warp_image(moving, field)
    written, _ = read_image(outputs.warped)
    inside = _sampled_inside(field, SHAPE)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(by_itk[inside], by_nnreg[inside], atol=0.05, rtol=1e-4)
    np.testing.assert_allclose(written, by_nnreg, atol=1e-4)
    # a wrong convention (e.g. push instead of pull, or voxel units) would differ by far more
    assert np.abs(by_nnreg - moving).max() > 10


def test_itk_field_works_with_moving_on_its_own_grid(tmp_path: Path) -> None:
    """With a moving image on another grid, the ITK field applied to the *original* moving image matches nnreg's
    warp of the moving image resampled onto the fixed grid (up to the extra interpolation)."""
    fixed_geometry = Geometry(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    moving_geometry = Geometry((12, 15, 10), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), fixed_geometry.direction)
    grids = np.meshgrid(*[np.arange(n) for n in moving_geometry.shape], indexing="ij")
    moving = (100 + 5 * grids[0] + 3 * grids[1] + 4 * grids[2]).astype(np.float32)   # linear: no interpolation error
    from nnreg.inference.resample import resample_onto

    moving_on_fixed = resample_onto(moving, moving_geometry, fixed_geometry)
    field = smooth_field(SHAPE, amplitude=1.5, seed=2)
    outputs = pair_outputs(tmp_path, "A_0001_0000.nii.gz", "A_0002_0000.nii.gz")
    export_pair(ExportJob(outputs, ExportOptions(itk=True), field, fixed_geometry))
    by_itk = _apply_itk(outputs.itk, to_sitk(moving, moving_geometry), to_sitk(moving_on_fixed, fixed_geometry))
    by_nnreg = warp_image(moving_on_fixed, field)
    inside = _sampled_inside(field, SHAPE, margin=2.0)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(by_itk[inside], by_nnreg[inside], atol=0.05)
