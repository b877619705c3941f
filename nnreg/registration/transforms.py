"""The registration's whole transform evaluated on the user's own grids, and as ITK transforms.

Conventions: see :mod:`nnreg.alignment.grids` (LPS mm, ``(i, j, k)`` arrays) and :mod:`nnreg.registration.pipeline`:
a fixed point ``p`` maps to the moving point ``T(p + d(p))``, ``T`` the affine, ``d`` the deformable displacement
(mm) sampled from the working grid (trilinear, edge values outside). Written as

* a **Learn2Reg field** on the fixed image's own grid: ``u(x) = z(x) - x`` with ``z`` the moving image's voxel index
  of ``T(p(x) + d(p(x)))`` (pull, voxel units, array axes; ``warped(x) = moving(x + u(x))``);
* **ITK transforms**: ``T`` as an ``AffineTransform`` (ANTs' ``PREFIX0GenericAffine.mat``) and ``d`` as a
  displacement field image on the fixed grid (``PREFIX1Warp.nii.gz``); ITK's composite applies the last added
  transform first, so ``CompositeTransform([affine, displacement])`` maps ``p`` to ``T(p + d(p))``, and
  ``antsApplyTransforms -t PREFIX1Warp.nii.gz -t PREFIX0GenericAffine.mat`` is the same transform;
* the **inverse**: ``p = q' + w(q')`` with ``q' = T^-1(q)`` and ``w`` the inverse of ``d`` (fixed-point inversion
  on the working grid), ``PREFIX1InverseWarp.nii.gz`` on the fixed grid; ``CompositeTransform([inverse warp,
  T^-1])`` maps a moving point to its fixed point (ANTs: ``-t [PREFIX0GenericAffine.mat,1] -t
  PREFIX1InverseWarp.nii.gz``), and a Learn2Reg inverse field lives on the moving image's grid.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from nnreg.alignment.grids import physical_to_index, voxel_centres
from nnreg.alignment.sampling import millimetre_field, sample_field_at
from nnreg.dataset.image_io import Geometry
from nnreg.registration.pipeline import Registration
from nnreg.spatial import invert_displacement
from nnreg.utilities.slabs import row_slabs, slab_rows


def affine_transform(registration: Registration) -> sitk.AffineTransform:
    """The affine stage as ITK's ``AffineTransform`` (centre, matrix, translation)."""
    transform = sitk.AffineTransform(3)
    transform.SetCenter([float(c) for c in registration.affine.centre])
    transform.SetMatrix([float(a) for a in registration.affine.matrix.ravel()])
    transform.SetTranslation([float(t) for t in registration.affine.translation])
    return transform


def apply_matrix(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``matrix`` (4x4) applied to points ``(..., 3)`` (float64)."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    return points @ m[:3, :3].T + m[:3, 3]


def forward_on_fixed_grid(registration: Registration, fixed: Geometry, moving: Geometry
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(Learn2Reg field ``(H, W, D, 3)`` float32 in moving voxels, deformable displacement ``d`` in mm on the fixed
    grid ``(H, W, D, 3)`` float32), computed in float64 slab by slab along the first axis
    (:mod:`nnreg.utilities.slabs`: ~0.2 GB of temporaries a slab, not ~2 GB for a 0.7 mm scan's 20 M voxels; the same
    values as one pass over the grid)."""
    field = np.empty((*fixed.shape, 3), np.float32)
    displacement = np.empty((*fixed.shape, 3), np.float32)
    rows = slab_rows(fixed.shape[1] * fixed.shape[2])
    to_moving = physical_to_index(moving) @ registration.affine.homogeneous
    with torch.no_grad():
        millimetres = millimetre_field(registration.field.double(), registration.working)
        for slab in row_slabs(fixed.shape[0], rows):
            points = torch.from_numpy(voxel_centres(fixed, slab))
            d = sample_field_at(millimetres, registration.working, points)
            moved = apply_matrix(to_moving, points + d)
            del points
            for axis, (first, stop) in enumerate(((slab.start, slab.stop), (0, fixed.shape[1]), (0, fixed.shape[2]))):
                shape = [1, 1, 1]                     # minus the fixed voxel index, axis by axis, in place
                shape[axis] = stop - first
                moved[..., axis] -= torch.arange(first, stop, dtype=moved.dtype).reshape(shape)
            field[slab] = moved.numpy()
            displacement[slab] = d.numpy()
    return field, displacement


def inverse_on_moving_grid(registration: Registration, fixed: Geometry, moving: Geometry
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(Learn2Reg inverse field on the moving grid in fixed voxels, inverse deformable displacement ``w`` in mm on
    the fixed grid), both ``(H, W, D, 3)`` float32."""
    with torch.no_grad():
        inverse_w = millimetre_field(invert_displacement(registration.field.double()), registration.working)
        on_fixed = sample_field_at(inverse_w, registration.working, torch.from_numpy(voxel_centres(fixed)))
        points = apply_matrix(np.linalg.inv(registration.affine.homogeneous),
                               torch.from_numpy(voxel_centres(moving)))
        back = points + sample_field_at(inverse_w, registration.working, points)
        index = torch.from_numpy(voxel_centres(_index_geometry(moving)))
        field = apply_matrix(physical_to_index(fixed), back) - index
        return field.float().numpy(), on_fixed.float().numpy()


def _index_geometry(geometry: Geometry) -> Geometry:
    """A grid whose physical points are its voxel indices (for index arrays)."""
    return Geometry(geometry.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
