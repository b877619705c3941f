"""Intensity normalisation that holds for any scanner: unit range, offset, bias field and gamma.

Each image is mapped linearly so that its 0.5th percentile becomes 0 and the 99.5th percentile of the voxels above
it becomes 1, then clipped to [0, 1] (robust to outliers, no assumed range). For two images of one contrast the
moving image's histogram is then matched to the fixed image's (a monotonic map: it removes a gamma or any other
monotonic change of units); a smooth bias field is left to the similarity (local NCC ignores it). Conventions: arrays
in ``(i, j, k)`` order; the result is float32.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnreg.utilities.errors import NnregError

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def robust_range(image: np.ndarray, name: str = "image") -> tuple[float, float]:
    """(low, high) intensities of :data:`LOW_PERCENTILE` and of :data:`HIGH_PERCENTILE` of the voxels above low;
    one-line error when the image is empty, constant or not finite."""
    values = np.asarray(image, dtype=np.float32).ravel()
    if values.size == 0:
        raise NnregError("the image is empty (no voxels)", name)
    if not np.isfinite(values).all():
        raise NnregError(f"the image has {int((~np.isfinite(values)).sum())} NaN/inf voxel(s)", name)
    low = float(np.percentile(values, LOW_PERCENTILE))
    above = values[values > low]
    if above.size == 0:
        raise NnregError(f"the image is constant ({low:g} everywhere): nothing to register", name)
    high = float(np.percentile(above, HIGH_PERCENTILE))
    if high <= low:
        high = float(above.max())
    return low, high


def normalise(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``clip((image - low) / (high - low), 0, 1)`` with :func:`robust_range`."""
    low, high = robust_range(image, name)
    return np.clip((np.asarray(image, dtype=np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def match_histogram(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """``moving``'s intensities mapped monotonically so that its histogram matches ``fixed``'s (voxels above each
    image's mean only, i.e. the background stays out), both normalised to [0, 1]."""
    matched = sitk.HistogramMatching(sitk.GetImageFromArray(np.ascontiguousarray(moving, dtype=np.float32)),
                                     sitk.GetImageFromArray(np.ascontiguousarray(fixed, dtype=np.float32)),
                                     numberOfHistogramLevels=256, numberOfMatchPoints=32,
                                     thresholdAtMeanIntensity=True)
    return np.clip(sitk.GetArrayFromImage(matched), 0.0, 1.0).astype(np.float32)
