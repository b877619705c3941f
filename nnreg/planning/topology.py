"""Shape rules shared by every planner: the network box, cascade depth and divisibility.

All in array-axis order (i, j, k), voxels of the configuration's grid.
"""
from __future__ import annotations

import math

MIN_COARSEST_VOXELS = 8     # the coarsest cascade level keeps at least this many voxels per axis
MAX_LEVELS = 5              # the paper's pyramid depth


def cascade_depth(box: list[int], min_coarsest: int = MIN_COARSEST_VOXELS, max_levels: int = MAX_LEVELS) -> int:
    """Deepest pyramid (≤ ``max_levels``) whose coarsest level keeps ≥ ``min_coarsest`` voxels on every axis."""
    levels = 1
    while levels < max_levels and min(box) / 2 ** levels >= min_coarsest:
        levels += 1
    return levels


def network_box(foreground_box: list[list[int]], resampled_shape: list[int], factor: list[float],
                divisor: int, margin_voxels: int) -> tuple[list[int], list[int]]:
    """(crop_start, shape) of the network input in the resampled grid.

    The union foreground box (original voxels) is mapped to the resampled grid, widened by a margin, rounded
    up to a multiple of ``divisor`` and centred on the foreground; it stays inside the image where it can
    and is zero-padded where it cannot.
    """
    starts, shapes = [], []
    for (lo, hi), n, f in zip(foreground_box, resampled_shape, factor):
        lo_r = max(0, math.floor((lo + 0.5) / f - 0.5) - margin_voxels)
        hi_r = min(n, math.ceil((hi - 0.5) / f - 0.5) + 1 + margin_voxels)
        size = max(divisor, math.ceil((hi_r - lo_r) / divisor) * divisor)
        start = lo_r - (size - (hi_r - lo_r)) // 2
        if size <= n:   # fits: slide inside the image instead of padding
            start = min(max(start, 0), n - size)
        starts.append(int(start))
        shapes.append(int(size))
    return starts, shapes
