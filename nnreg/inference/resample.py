"""Bring a moving image onto the fixed image's grid when the two grids differ (shape, spacing, origin, direction).

Conventions: arrays in (i, j, k) order, geometry in ITK physical space (mm, LPS). The images must already be
aligned in physical space (Learn2Reg pairs are); resampling uses the identity physical transform, linear
interpolation for images and nearest neighbour for label maps, 0 outside the moving image.
"""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from nnreg.dataset.image_io import Geometry

logger = logging.getLogger(__name__)


def same_grid(a: Geometry, b: Geometry, tolerance: float = 1e-4) -> bool:
    """True when two geometries describe the same voxel grid (up to ``tolerance`` mm / cosine)."""
    return (tuple(a.shape) == tuple(b.shape)
            and np.allclose(a.spacing, b.spacing, atol=tolerance)
            and np.allclose(a.origin, b.origin, atol=tolerance)
            and np.allclose(a.direction, b.direction, atol=tolerance))


def other_grid_shape(grid: Geometry | None, reference: Geometry) -> tuple[int, ...] | None:
    """``grid``'s shape when it is another grid than ``reference`` (what a field on ``reference`` records as the
    grid it points into, :func:`nnreg.dataset.image_io.write_displacement`'s ``points_into``), else None."""
    return None if grid is None or same_grid(grid, reference) else tuple(grid.shape)


def describe_grid(a: Geometry, b: Geometry) -> tuple[str, str]:
    """How two grids read in a message: shape and spacing, plus the origin and direction where those differ (two
    grids of one shape and spacing must not read alike)."""
    parts = [(f"{list(a.shape)} @ {[round(s, 4) for s in a.spacing]} mm",
              f"{list(b.shape)} @ {[round(s, 4) for s in b.spacing]} mm")]
    if not np.allclose(a.origin, b.origin, atol=1e-4):
        parts.append((f"origin {[round(o, 3) for o in a.origin]}", f"origin {[round(o, 3) for o in b.origin]}"))
    if not np.allclose(a.direction, b.direction, atol=1e-4):
        parts.append((f"direction {[round(d, 3) for d in a.direction]}",
                      f"direction {[round(d, 3) for d in b.direction]}"))
    return ", ".join(p[0] for p in parts), ", ".join(p[1] for p in parts)


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """An ITK image from an (i, j, k) array and its geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in geometry.spacing))
    image.SetOrigin(tuple(float(o) for o in geometry.origin))
    image.SetDirection(tuple(float(d) for d in geometry.direction))
    return image


def resample_image(image: sitk.Image, target: Geometry, labels: bool = False) -> np.ndarray:
    """A SimpleITK image onto the ``target`` grid in physical space (linear, or nearest for labels; 0 outside);
    (i, j, k) array out."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in target.shape])
    resampler.SetOutputSpacing([float(s) for s in target.spacing])
    resampler.SetOutputOrigin([float(o) for o in target.origin])
    resampler.SetOutputDirection([float(d) for d in target.direction])
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if labels else sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0)
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampler.Execute(image)).transpose(2, 1, 0))


def resample_onto(array: np.ndarray, geometry: Geometry, target: Geometry, labels: bool = False) -> np.ndarray:
    """Resample ``array`` (on ``geometry``) onto the ``target`` grid in physical space; (i, j, k) array out."""
    return resample_image(to_sitk(array, geometry), target, labels).astype(array.dtype, copy=False)


def align_moving(moving: np.ndarray, moving_geometry: Geometry, fixed_geometry: Geometry,
                 name: str = "moving image", labels: bool = False, grid: str = "fixed") -> np.ndarray:
    """``moving`` on the fixed grid (``grid`` names that grid's image in the message, e.g. ``"moving"`` for a label
    map brought onto its moving image): unchanged when the grids agree, else resampled with an INFO message."""
    if same_grid(moving_geometry, fixed_geometry):
        return moving
    own, other = describe_grid(moving_geometry, fixed_geometry)
    logger.info("%s: grid %s differs from the %s image's %s; resampled onto the %s grid", name, own, grid, other,
                grid)
    return resample_onto(moving, moving_geometry, fixed_geometry, labels=labels)
