"""Landmarks for training pairs, which the datasets give none: the validation landmarks' own recipe applied to a
label map (so settings can be compared on TRE without reading the held-out landmarks).

OpenBrains' validation landmarks (``../shared/data/README.md``, "Landmarks") are, for 21 compact FreeSurfer aseg
structures, the structure's centroid drawn as a 7-voxel blob (the centre and its 6 face neighbours) labelled ``k``.
Here the centroid is the mean voxel index of the structure in the label map on the image's own grid (the dataset
computed it in the subject's native space before resampling; the difference is below a voxel), rounded to the
nearest voxel. Conventions: array axes ``(i, j, k)`` of the image, voxel units. A structure absent from the label
map gets no blob (the official TRE then skips landmark ``k``: it scores the fixed image's labels only).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nnreg.dataset.image_io import Geometry

#: aseg ids of OpenBrains' landmarks, in the order of their landmark label k = 1..21 (the dataset README's table)
LANDMARK_STRUCTURES: tuple[int, ...] = (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60, 7, 46,
                                        14, 15, 16)

_FACE_NEIGHBOURS = np.array([(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)])


def centroid_landmarks(labels: np.ndarray, structures: tuple[int, ...] | None = None) -> np.ndarray:
    """An int16 landmark volume of ``labels``' shape: blob ``k`` (1-based position in ``structures``, default
    :data:`LANDMARK_STRUCTURES`) at the rounded centroid of ``labels == structures[k - 1]``; blob voxels outside
    the grid are dropped."""
    structures = LANDMARK_STRUCTURES if structures is None else structures
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {labels.shape}")
    out = np.zeros(labels.shape, dtype=np.int16)
    shape = np.asarray(labels.shape)
    for k, structure in enumerate(structures, start=1):
        where = np.argwhere(labels == structure)
        if where.size == 0:
            continue
        centre = np.floor(where.mean(axis=0) + 0.5).astype(np.int64)
        for offset in _FACE_NEIGHBOURS:
            point = centre + offset
            if np.all(point >= 0) and np.all(point < shape):
                out[tuple(point)] = k
    return out


def write_proxy_landmarks(fixed_labels: Path, moving_labels: np.ndarray, geometry: "Geometry", stem: Path
                          ) -> tuple[dict[str, Path], np.ndarray] | None:
    """Centroid landmarks of the fixed label map (a file) and of the moving one (already read, on ``geometry``),
    written as ``{stem}_{fixed,moving}_landmarks_proxy.nii.gz``: (their paths, the moving landmark volume); None when
    the fixed label map is missing."""
    from nnreg.dataset.image_io import read_image, write_image

    if not fixed_labels.is_file():
        return None
    fixed, fixed_geometry = read_image(fixed_labels, dtype=np.int32)
    moving = centroid_landmarks(moving_labels)
    paths = {role: Path(f"{stem}_{role}_landmarks_proxy.nii.gz") for role in ("fixed", "moving")}
    write_image(centroid_landmarks(fixed), fixed_geometry, paths["fixed"])
    write_image(moving, geometry, paths["moving"])
    return paths, moving
