"""TRE from landmark blobs, as the official ``calc_TRE``.

Conventions: landmark volumes are label maps in nibabel ``(i, j, k)`` order (0 = background, blob k =
landmark k); ``warped`` is the moving landmark volume NN-warped onto the fixed grid. Distances are in
voxels: the official code ignores the voxel spacing (``spacing_mov = 1``), so on a 2 mm grid TRE is in
2-mm voxels.

Rule: the landmarks are the sorted unique values of the *fixed* volume without the first (smallest) one,
the background. For each, the centroid (mean voxel index) of ``warped == k`` and of ``fixed == k``; TRE
per landmark is their Euclidean distance; the pair TRE is the plain mean, so a vanished blob (centroid
0/0) makes it NaN. Centroids are sums of integer coordinates, exact in float64, so they equal the
official values bit for bit.
"""
from __future__ import annotations

import numpy as np


def _centroids(volume: np.ndarray, landmark_values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Mean index of each landmark value among the voxels flagged by ``candidates`` (NaN when absent).

    ``skimage.measure.regionprops`` computes the centroids (the mean of integer coordinates, exact in float64) of a
    label image numbering the landmark values 1..n.
    """
    from skimage.measure import regionprops    # imported here: see nnreg.evaluation.warp

    coords = np.nonzero(candidates)
    values = volume[coords]
    idx = np.minimum(np.searchsorted(landmark_values, values), len(landmark_values) - 1)
    keep = landmark_values[idx] == values
    labels = np.zeros(volume.shape, dtype=np.int32)
    labels[tuple(c[keep] for c in coords)] = idx[keep] + 1
    out = np.full((len(landmark_values), 3), np.nan)
    for region in regionprops(labels):
        out[region.label - 1] = region.centroid
    return out


def tre_per_landmark(fixed: np.ndarray, warped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(landmark values, distance of each)`` in voxels; NaN for a landmark whose warped blob vanished."""
    fixed = np.asarray(fixed)
    warped = np.asarray(warped)
    unique = np.unique(fixed)
    values = unique[1:]
    if values.size == 0:
        return values, np.zeros(0)
    fixed_pos = _centroids(fixed, values, fixed != unique[0])
    warped_pos = _centroids(warped, values, np.isin(warped, values))
    distances = np.sqrt(np.sum(np.power(warped_pos - fixed_pos, 2), 1))
    return values, distances


def tre(fixed: np.ndarray, warped: np.ndarray) -> float:
    """Mean target registration error (voxels) over the landmarks of ``fixed``; NaN if a blob vanished."""
    _, distances = tre_per_landmark(fixed, warped)
    if distances.size == 0:
        return float("nan")
    return float(np.mean(distances))
