"""Voxel grids in physical space: index <-> millimetre matrices, a canonical (reoriented) working grid, pyramids.

Conventions (binding for :mod:`nnreg.alignment` and :mod:`nnreg.registration`):

* **Physical space** is ITK's: millimetres in LPS, as :class:`nnreg.dataset.image_io.Geometry` stores it
  (``origin``, ``spacing`` per array axis, ``direction`` 3x3 row-major, column ``c`` = direction of array axis ``c``).
* **Array-axis order** is ``(i, j, k)`` as nibabel loads the image; a voxel index ``x`` sits at the physical point
  ``p = origin + direction @ diag(spacing) @ x`` (:func:`index_to_physical`, a 4x4 homogeneous matrix).
* A **working grid** covers the same physical box as an image, with its axes permuted/flipped to the signed
  permutation nearest to the identity direction (the reorientation DICOMOrient does to "LPS", physical space kept)
  and an isotropic working spacing: two copies of one image given in different orientations or spacings get the
  same working grid (up to rounding of the box to whole voxels).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from nnreg.dataset.image_io import Geometry


def index_to_physical(geometry: Geometry) -> np.ndarray:
    """4x4 matrix mapping homogeneous voxel indices ``(i, j, k, 1)`` to LPS millimetres."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3) * np.asarray(geometry.spacing)
    matrix[:3, 3] = geometry.origin
    return matrix


def physical_to_index(geometry: Geometry) -> np.ndarray:
    """Inverse of :func:`index_to_physical`."""
    return np.linalg.inv(index_to_physical(geometry))


def canonical_permutation(direction: np.ndarray) -> np.ndarray:
    """The signed permutation ``P`` (3x3) for which ``direction @ P`` is closest to the identity (largest trace):
    new array axis ``a`` is old axis ``argmax`` of its alignment with LPS axis ``a``, flipped when it points back."""
    best, best_score = np.eye(3), -math.inf
    for order in itertools.permutations(range(3)):
        perm = np.zeros((3, 3))
        for new, old in enumerate(order):
            perm[old, new] = 1.0
        rotated = direction @ perm
        signs = np.where(np.diag(rotated) < 0, -1.0, 1.0)
        score = float(np.sum(np.abs(np.diag(rotated))))
        if score > best_score + 1e-9:
            best, best_score = perm * signs[None, :], score
    return best


def working_geometry(geometry: Geometry, spacing: float) -> Geometry:
    """The canonical grid at isotropic ``spacing`` mm covering the physical box of ``geometry`` (see module doc)."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    new_direction = direction @ canonical_permutation(direction)
    to_physical = index_to_physical(geometry)
    shape = np.asarray(geometry.shape, dtype=np.float64)
    corners = np.array([[c * (n - 1) + (2 * c - 1) * 0.5 for c, n in zip(corner, shape)]
                        for corner in itertools.product((0, 1), repeat=3)])          # voxel-box corners
    points = corners @ to_physical[:3, :3].T + to_physical[:3, 3]
    local = points @ new_direction                       # coordinates along the new axes
    low, high = local.min(axis=0), local.max(axis=0)
    size = np.maximum(np.round((high - low) / spacing), 2).astype(int)
    centre = (low + high) / 2
    first = centre - (size - 1) / 2 * spacing            # first voxel centre, centred on the box
    origin = new_direction @ first
    return Geometry(tuple(int(s) for s in size), (float(spacing),) * 3, tuple(float(o) for o in origin),
                    tuple(float(d) for d in new_direction.ravel()))


def subdivided_geometry(geometry: Geometry, factor: int) -> Geometry:
    """The grid covering ``geometry``'s voxel box with each voxel split into ``factor^3`` (same extent and axes:
    :func:`nnreg.spatial.resize_field`'s convention that grids share their box, voxel centres at ``(i + 0.5) s``)."""
    if factor == 1:
        return geometry
    offset = index_to_physical(geometry)[:3, :3] @ np.full(3, -(factor - 1) / (2 * factor))
    return Geometry(tuple(s * factor for s in geometry.shape), tuple(s / factor for s in geometry.spacing),  # type: ignore[arg-type]
                    tuple(float(o) for o in np.asarray(geometry.origin) + offset), geometry.direction)


def pooled_geometry(geometry: Geometry, factor: int) -> Geometry:
    """The grid of ``avg_pool3d(kernel=factor)`` of an image on ``geometry`` (floor-truncated, block centres)."""
    if factor == 1:
        return geometry
    shape = tuple(max(1, s // factor) for s in geometry.shape)
    offset = index_to_physical(geometry)[:3, :3] @ np.full(3, (factor - 1) / 2)
    return Geometry(shape, tuple(s * factor for s in geometry.spacing),                        # type: ignore[arg-type]
                    tuple(float(o) for o in np.asarray(geometry.origin) + offset), geometry.direction)


def voxel_centres(geometry: Geometry, rows: slice | None = None) -> np.ndarray:
    """Physical coordinates ``(H, W, D, 3)`` (float64) of every voxel centre (one broadcast sum per coordinate: a
    ``(N, 3) @ (3, 3)`` product over a 1 mm brain's 7 M voxels takes 20 times longer). ``rows``: only the slab
    ``i in range(rows.start, rows.stop)`` of the first axis, ``(stop - start, W, D, 3)``, bitwise those rows of the
    whole array (the same arithmetic per voxel)."""
    matrix = index_to_physical(geometry)
    i, j, k = (np.arange(n, dtype=np.float64) for n in geometry.shape)
    if rows is not None:
        i = i[rows]
    out = np.empty((len(i), *geometry.shape[1:], 3))
    for c in range(3):
        out[..., c] = ((matrix[c, 3] + matrix[c, 0] * i)[:, None, None] + (matrix[c, 1] * j)[None, :, None]
                       + (matrix[c, 2] * k)[None, None, :])
    return out
