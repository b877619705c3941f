"""Nearest-neighbour warping exactly as the Learn2Reg/LUMIR evaluator does it.

Conventions: displacement fields are ``(H, W, D, 3)`` in voxel units along the array axes, pull convention
``warped(x) = moving(x + u(x))``, arrays in nibabel ``(i, j, k)`` order. The official evaluator calls
``scipy.ndimage.map_coordinates(moving, identity + u, order=0)`` (constant 0 outside) on float64 arrays;
nnreg calls the same function with the same float64 coordinates, so the chosen voxel is bit-identical.
To warp several volumes (labels and landmarks) with one interpolation, the flat voxel *index* is warped
once and reused: order-0 interpolation only selects a sample, so this equals warping each volume.

The evaluation modules import scipy and scikit-image where they call them: ``nnreg_register`` and ``nnreg_predict``
import this package for its warping helpers, and those imports were 0.3 s of their start-up.
"""
from __future__ import annotations

import numpy as np

OUTSIDE = -1  # flat index marking a sample taken outside the moving grid (the evaluator's constant 0)


def sample_coordinates(disp: np.ndarray, first_row: int = 0) -> np.ndarray:
    """``identity + u`` as a float64 ``(3, H, W, D)`` array, the coordinates the official evaluator samples.
    ``first_row``: ``disp`` is the slab of a larger field that starts at that index of the first axis (the same
    sums as for the whole field)."""
    disp = np.asarray(disp)
    coords = np.empty((3,) + tuple(disp.shape[:3]), dtype=np.float64)
    for axis in range(3):
        start = first_row if axis == 0 else 0
        ramp = np.arange(start, start + disp.shape[axis], dtype=np.float64).reshape(
            [-1 if a == axis else 1 for a in range(3)])
        np.add(disp[..., axis], ramp, out=coords[axis])  # same float64 sums as meshgrid + u
    return coords


def nearest_indices(disp: np.ndarray, moving_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Flat index into the moving volume picked for every fixed voxel (``OUTSIDE`` where out of bounds)."""
    from scipy.ndimage import map_coordinates

    shape = tuple(moving_shape) if moving_shape is not None else tuple(disp.shape[:3])
    flat = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    picked = map_coordinates(flat, sample_coordinates(disp), order=0, mode="constant", cval=float(OUTSIDE))
    return picked.astype(np.int64)


def warp_with_indices(moving: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Apply indices from :func:`nearest_indices`; voxels sampled outside the grid become 0 (as the evaluator)."""
    moving = np.asarray(moving)
    out = moving.reshape(-1)[np.where(indices == OUTSIDE, 0, indices)]
    out[indices == OUTSIDE] = 0
    return out


def warp_nearest(moving: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """Warp one volume with nearest-neighbour interpolation, exactly the official call."""
    from scipy.ndimage import map_coordinates

    moving = np.asarray(moving, dtype=np.float64)
    return map_coordinates(moving, sample_coordinates(disp), order=0)
