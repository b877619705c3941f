"""Sampling an image through a physical affine transform with ``grid_sample`` (differentiable in the transform).

Conventions: see :mod:`nnreg.alignment.grids` (LPS millimetres, ``(i, j, k)`` array axes). A transform is a 4x4
matrix ``T`` mapping a point ``p`` of the **target** (fixed) space to the point ``T p`` of the **source** (moving)
space where it is sampled: a pull, as ITK's ``Resample(moving, fixed, T)``. Sampling is trilinear between voxel
centres (``align_corners=True``), i.e. ``scipy.ndimage.map_coordinates(order=1)`` at the source's voxel indices.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nnreg.alignment.grids import index_to_physical, physical_to_index
from nnreg.dataset.image_io import Geometry
from nnreg.spatial.sampling import grid_sample


def _normaliser(shape: tuple[int, ...]) -> torch.Tensor:
    """4x4 matrix: voxel index (i, j, k) -> grid_sample's normalised (x, y, z) = (k, j, i) in [-1, 1]."""
    matrix = torch.zeros(4, 4, dtype=torch.float64)
    for axis, size in enumerate(shape):
        matrix[2 - axis, axis] = 2.0 / max(int(size) - 1, 1)
        matrix[2 - axis, 3] = -1.0
    matrix[3, 3] = 1.0
    return matrix


def index_transform(target: Geometry, source: Geometry, transform: torch.Tensor) -> torch.Tensor:
    """4x4 (float64) map from target voxel indices to source voxel indices through the physical ``transform``."""
    to_physical = torch.as_tensor(index_to_physical(target), dtype=torch.float64)
    to_index = torch.as_tensor(physical_to_index(source), dtype=torch.float64)
    return to_index @ transform.to(torch.float64) @ to_physical


def sample_affine(image: torch.Tensor, source: Geometry, target: Geometry, transform: torch.Tensor,
                  mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """``image`` (1, C, ...) on ``source`` sampled at ``transform(p)`` for every voxel ``p`` of ``target``."""
    theta = _normaliser(source.shape) @ index_transform(target, source, transform) @ \
        torch.linalg.inv(_normaliser(target.shape))
    grid = F.affine_grid(theta[:3].unsqueeze(0).to(image.dtype), [1, 1, *target.shape], align_corners=True)
    return grid_sample(image, grid, mode=mode, padding_mode=padding)


def millimetre_field(field: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """A voxel-unit field ``(1, 3, H, W, D)`` on ``geometry`` in LPS mm: ``Direction @ diag(spacing) @ u``."""
    matrix = torch.as_tensor(index_to_physical(geometry)[:3, :3], dtype=field.dtype)
    return torch.einsum("rc,bc...->br...", matrix, field)


def sample_field_at(field: torch.Tensor, field_geometry: Geometry, points: torch.Tensor) -> torch.Tensor:
    """A vector field ``(1, C, H, W, D)`` on ``field_geometry`` at physical ``points`` ``(..., 3)`` (float64),
    trilinear, edge values outside (border padding, as nnreg resamples fields); returns ``(..., C)``."""
    to_index = torch.as_tensor(physical_to_index(field_geometry), dtype=torch.float64)
    index = points @ to_index[:3, :3].T + to_index[:3, 3]
    normalised = index @ _normaliser(field_geometry.shape)[:3, :3].T + _normaliser(field_geometry.shape)[:3, 3]
    grid = normalised.reshape(1, -1, 1, 1, 3).to(field.dtype)
    out = grid_sample(field, grid, mode="bilinear", padding_mode="border")      # every CPU thread, the same values
    return out[0, :, :, 0, 0].T.reshape(*points.shape[:-1], field.shape[1])


def sample_at_indices(image: torch.Tensor, index: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``image`` (1, 1, H, W, D) at voxel indices ``index`` ``(..., 3)``, 0 outside (trilinear or nearest)."""
    normaliser = _normaliser(image.shape[2:])
    normalised = index.to(torch.float64) @ normaliser[:3, :3].T + normaliser[:3, 3]
    grid = normalised.reshape(1, -1, 1, 1, 3).to(image.dtype)
    out = grid_sample(image, grid, mode=mode, padding_mode="zeros")             # every CPU thread, the same values
    return out.reshape(index.shape[:-1])


def centre_of_mass(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Intensity-weighted centre (LPS mm) of a non-negative image (its voxel-box centre when it is all zero)."""
    weights = np.clip(np.asarray(image, dtype=np.float64), 0, None)
    total = weights.sum()
    if total <= 0:
        centre = (np.asarray(geometry.shape, dtype=np.float64) - 1) / 2
    else:
        centre = np.array([(weights.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n)).sum() / total
                           for axis, n in enumerate(weights.shape)])
    matrix = index_to_physical(geometry)
    return matrix[:3, :3] @ centre + matrix[:3, 3]
