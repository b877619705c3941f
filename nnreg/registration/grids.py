"""Resampling a user's image onto a working grid in physical space (SimpleITK, identity transform).

Conventions: see :mod:`nnreg.alignment.grids` (LPS mm, ``(i, j, k)`` arrays). When the working grid is coarser than
the image, the image is first smoothed by a Gaussian of ``sqrt(working^2 - spacing^2) / 2.355`` mm per axis (the
blur that turns the image's resolution into the working one) so that the coarse grid does not alias.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from nnreg.dataset.image_io import Geometry
from nnreg.inference.resample import resample_image, to_sitk


def resample_to(array: np.ndarray, geometry: Geometry, target: Geometry, labels: bool = False) -> np.ndarray:
    """``array`` (on ``geometry``) on the ``target`` grid: linear (smoothed first when coarser) or nearest."""
    image = to_sitk(np.asarray(array, dtype=np.float32 if not labels else array.dtype), geometry)
    if not labels:
        sigmas = [math.sqrt(max(t * t - s * s, 0.0)) / 2.355 for s, t in zip(geometry.spacing, _spacing_along(
            geometry, target))]
        if max(sigmas) > 0.05:
            image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigmas])
    return resample_image(image, target, labels)


def _spacing_along(geometry: Geometry, target: Geometry) -> list[float]:
    """The target's spacing seen along each of ``geometry``'s array axes (axes matched by direction)."""
    source = np.asarray(geometry.direction).reshape(3, 3)
    dest = np.asarray(target.direction).reshape(3, 3)
    return [float(target.spacing[int(np.argmax(np.abs(dest.T @ source[:, axis])))]) for axis in range(3)]
