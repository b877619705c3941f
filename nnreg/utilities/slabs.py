"""Slabs of the first array axis, for whole-grid work whose temporaries would otherwise scale with the grid (a 0.7 mm
scan's fixed grid holds 20 M voxels: float64 coordinates of all of them at once are ~0.5 GB each)."""
from __future__ import annotations

from typing import Iterator

#: points per slab: ~2 M, about 50 MB per float64 vector component
SLAB_POINTS = 1 << 21


def slab_rows(row_points: int) -> int:
    """Rows of ``row_points`` points each that make a slab of about :data:`SLAB_POINTS` (read at call time, so a test
    can make it small); at least 1."""
    return max(1, SLAB_POINTS // max(1, row_points))


def row_slabs(height: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of ``rows`` rows (the last one shorter) covering ``range(height)``."""
    for start in range(0, height, rows):
        yield slice(start, min(start + rows, height))
