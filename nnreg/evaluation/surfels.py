"""Surface elements ("surfels") of a binary mask: 2x2x2 neighbourhood codes and their areas.

Conventions: arrays in nibabel ``(i, j, k)`` order, unit (voxel) spacing as the Learn2Reg evaluator uses.

This is the surface model of DeepMind's ``surface-distance`` (which the official HD95 uses): every corner
point between voxels gets an 8-bit code from the 2x2x2 voxels around it (the voxel at offset
``(a-1, b-1, c-1)``, a, b, c in {0, 1}, contributes bit ``7 - (4a + 2b + c)``); a corner is on the surface
when its code is neither 0 nor 255, and it carries the area of the marching-cubes surface in that cell.

The area depends only on the configuration up to the 48 symmetries of the cube and complement (inside and
outside swapped), so it is derived here from the 14 classes of marching cubes, each given by a
representative set of inside corners and the area of its triangulation (triangle cutting one corner:
sqrt(3)/8; quad across an edge: sqrt(2)/2; square across the cube: 1; ...), summed triangle by triangle in
the order that reproduces the ``surface-distance`` values to the last bit (the percentile below depends on
cumulative sums of these areas). Tests compare all 256 values with that package when it is installed.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

_S3 = math.sqrt(3.0)
_S2 = math.sqrt(2.0)

# Marching-cubes classes: representative inside corners (a, b, c) -> surface area in the cell (voxel units).
_CLASS_AREAS: list[tuple[tuple[tuple[int, int, int], ...], float]] = [
    ((), 0.0),                                                   # empty / full: no surface
    (((1, 1, 1),), _S3 / 8),                                     # one corner cut off
    (((1, 1, 0), (1, 1, 1)), _S2 / 2),                           # one edge: a rectangle
    (((1, 0, 1), (1, 1, 0)), _S3 / 4),                           # face diagonal: two corner triangles
    (((0, 1, 1), (1, 0, 0)), _S3 / 4),                           # body diagonal: two corner triangles
    (((1, 0, 1), (1, 1, 0), (1, 1, 1)), 0.5 + 3 * _S3 / 8),      # L of three on a face: three triangles
    (((0, 1, 1), (1, 0, 1), (1, 1, 0)), 3 * _S3 / 8),            # three mutually diagonal corners
    (((0, 1, 1), (1, 0, 0), (1, 1, 1)), _S2 / 2 + _S3 / 8),      # an edge plus the far corner
    (((1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)), 1.0),         # a full face: a square
    (((0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 1, 1)), _S3 / 8 + _S3 / 4 + _S3 / 4 + _S3 / 8),  # hexagon, 4 triangles
    (((0, 1, 1), (1, 0, 0), (1, 1, 0), (1, 1, 1)), _S3 / 8 + 3 * _S3 / 8 + _S2 / 4 + _S2 / 4),  # zig-zag chain
    (((0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0)), 0.5 + _S3 / 2),      # L of three plus a far corner
    (((0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1)), _S2),          # two opposite parallel edges
    (((0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1)), _S3 / 2),      # four alternate corners: four triangles
]


def _bit(a: int, b: int, c: int) -> int:
    return 1 << (7 - (4 * a + 2 * b + c))


def _code(corners: set[tuple[int, int, int]]) -> int:
    return sum(_bit(*p) for p in corners)


def _symmetric_codes(corners: set[tuple[int, int, int]]) -> set[int]:
    """Codes of every rotation/reflection of the corner set and of its complement."""
    everything = set(itertools.product((0, 1), repeat=3))
    codes = set()
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((0, 1), repeat=3):
            image = {tuple(p[perm[k]] ^ flips[k] for k in range(3)) for p in corners}
            codes.add(_code(image))
            codes.add(_code(everything - image))
    return codes


@lru_cache(maxsize=1)
def surfel_area_table() -> np.ndarray:
    """Area of the surface element for each of the 256 neighbourhood codes (unit spacing), float64."""
    table = np.full(256, np.nan)
    for corners, area in _CLASS_AREAS:
        for code in _symmetric_codes(set(corners)):
            table[code] = area
    if np.isnan(table).any():  # the 14 classes must cover all 256 codes
        raise AssertionError("surfel classes do not cover every neighbourhood code")
    return table


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit code of every corner point of ``mask`` (shape + 1 per axis), as uint8.

    Corner p sits between voxels p-1 and p on each axis; voxels outside the array count as background.
    """
    m = np.asarray(mask, dtype=np.uint8)
    padded = np.pad(m, 1)
    n0, n1, n2 = (s + 1 for s in m.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a, b, c in itertools.product((0, 1), repeat=3):
        codes |= padded[a:a + n0, b:b + n1, c:c + n2] * np.uint8(_bit(a, b, c))
    return codes
