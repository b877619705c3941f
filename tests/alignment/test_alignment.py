"""Working grids, affine sampling (against SimpleITK) and the recovery of a known affine transform."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from nnreg.alignment import AffineSettings, register_affine, sample_affine, working_geometry
from nnreg.alignment.grids import index_to_physical, pooled_geometry, voxel_centres
from nnreg.dataset.image_io import Geometry
from nnreg.registration.normalization import normalise
from tests.alignment.phantom import affine, array, moved, phantom, reoriented


def geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                    tuple(image.GetDirection()))


def test_working_grid_is_the_same_for_a_reoriented_copy():
    image, _ = phantom()
    again = reoriented(image, (1.2, 1.0, 1.5))
    a, b = working_geometry(geometry_of(image), 2.0), working_geometry(geometry_of(again), 2.0)
    assert np.allclose(a.direction, np.eye(3).ravel()) and np.allclose(b.direction, np.eye(3).ravel())
    assert np.abs(np.subtract(a.shape, b.shape)).max() <= 1
    centre = lambda g: index_to_physical(g)[:3] @ np.append((np.asarray(g.shape) - 1) / 2, 1)  # noqa: E731
    assert np.abs(centre(a) - centre(b)).max() < 1.0


def test_pooled_geometry_matches_average_pooling():
    geometry = Geometry((8, 6, 4), (1.0, 2.0, 3.0), (5.0, -2.0, 1.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))
    points = voxel_centres(geometry)
    pooled = torch.nn.functional.avg_pool3d(torch.from_numpy(points).permute(3, 0, 1, 2)[None], 2)[0]
    assert np.allclose(pooled.permute(1, 2, 3, 0).numpy(), voxel_centres(pooled_geometry(geometry, 2)))


def test_sample_affine_matches_simpleitk_resample():
    image, _ = phantom()
    target = reoriented(image, (2.5, 1.5, 2.0))
    transform = affine((8.0, -5.0, 6.0), (1.05, 0.95, 1.0), (3.0, -4.0, 2.0))
    reference = array(sitk.Resample(image, target, transform, sitk.sitkLinear, 0.0))
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(transform.GetMatrix()).reshape(3, 3)
    matrix[:3, 3] = transform.GetTranslation()
    ours = sample_affine(torch.from_numpy(array(image).astype(np.float32))[None, None], geometry_of(image),
                         geometry_of(target), torch.from_numpy(matrix))[0, 0].numpy()
    inside = (reference > 1) & (ours > 1)          # ITK and grid_sample differ only in the last half voxel
    assert inside.mean() > 0.2
    assert np.abs(ours - reference)[inside].max() < 1e-3 * 200


def test_affine_recovers_a_known_transform():
    """moving(p) = fixed(S(p)) with a known S: the fitted T (fixed -> moving) must be S^-1 within 1 mm."""
    fixed, _ = phantom()
    truth = affine((9.0, -7.0, 8.0), (1.08, 0.93, 1.0), (6.0, -5.0, 4.0))
    moving = moved(fixed, truth)
    f = torch.from_numpy(normalise(array(fixed)))[None, None]
    m = torch.from_numpy(normalise(array(moving)))[None, None]
    result = register_affine(f, geometry_of(fixed), m, geometry_of(moving), AffineSettings())
    points = voxel_centres(geometry_of(fixed))[array(fixed) > 0]
    fitted = points @ result.homogeneous[:3, :3].T + result.homogeneous[:3, 3]
    inverse = truth.GetInverse()
    expected = np.array([inverse.TransformPoint(p.tolist()) for p in points[::7]])
    error = np.linalg.norm(fitted[::7] - expected, axis=1)
    assert error.mean() < 1.0, error.mean()
    # SimpleITK as the independent resampler: the moving image through the fitted ITK transform is the fixed one.
    itk = sitk.AffineTransform(3)
    itk.SetCenter(result.centre.tolist())
    itk.SetMatrix(result.matrix.ravel().tolist())
    itk.SetTranslation(result.translation.tolist())
    aligned = array(sitk.Resample(moving, fixed, itk, sitk.sitkLinear, 0.0))
    before = np.abs(array(moving) - array(fixed)).mean()
    assert np.abs(aligned - array(fixed)).mean() < 0.3 * before


def test_mutual_information_recovers_a_rigid_transform_across_contrasts():
    """Inverted contrast (a different 'modality'): normalised MI, rigid stages, aligns a rigid
    motion within 1.5 mm."""
    fixed, _ = phantom()
    truth = affine((0.0, 0.0, 8.0), (1.0, 1.0, 1.0), (4.0, -3.0, 2.0))
    moving = moved(fixed, truth)
    m_array = array(moving)
    inverted = np.where(m_array > 0, 260.0 - m_array, 0.0).astype(np.float32)
    f = torch.from_numpy(normalise(array(fixed)))[None, None]
    m = torch.from_numpy(normalise(inverted))[None, None]
    settings = AffineSettings(similarity="mi", stages=(("rigid", 4, 60), ("rigid", 2, 40)), min_voxels=16)
    result = register_affine(f, geometry_of(fixed), m, geometry_of(moving), settings)
    points = voxel_centres(geometry_of(fixed))[array(fixed) > 0][::7]
    fitted = points @ result.homogeneous[:3, :3].T + result.homogeneous[:3, 3]
    expected = np.array([truth.GetInverse().TransformPoint(p.tolist()) for p in points])
    assert np.linalg.norm(fitted - expected, axis=1).mean() < 1.5



def test_a_moving_mask_with_a_cavity_keeps_the_affine() -> None:
    """Two synthetic subjects whose brains fill their grids; a cavity emptied in the moving one and left out by its
    mask: the fitted affine stays within 1 mm of the intact pair's. The masked mean is divided by the fixed side's
    voxels: divided by the warped mask's own sum it paid to turn the moving field of view over badly matched fixed
    voxels (10.5 mm away here, a 47 degree turn in the benchmark's run)."""
    from scipy import ndimage

    from tests.synthetic import make_subject

    shape = (24, 28, 24)
    geometry = Geometry(shape, (2.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    fixed, _ = make_subject(shape, 1)
    moving, labels = make_subject(shape, 2)
    cortex = np.argwhere(labels == 3)
    centre = cortex[np.random.default_rng([0, 0]).integers(len(cortex))]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    hole = (np.sqrt((((grid - centre) * 2.0) ** 2).sum(-1)) <= 6.0) & (moving > 0)
    mask = torch.from_numpy((~ndimage.binary_dilation(hole)).astype(np.float32))[None, None]
    f = torch.from_numpy(normalise(fixed))[None, None]

    def fit(image: np.ndarray, moving_mask: torch.Tensor | None) -> np.ndarray:
        m = torch.from_numpy(normalise(image))[None, None]
        return register_affine(f, geometry, m, geometry, AffineSettings(), moving_mask=moving_mask).homogeneous

    intact = fit(moving, None)
    masked = fit(np.where(hole, 0.0, moving).astype(np.float32), mask)
    points = voxel_centres(geometry)[fixed > 0]
    distance = np.linalg.norm(points @ (masked - intact)[:3, :3].T + (masked - intact)[:3, 3], axis=1).mean()
    assert distance < 1.0, distance
