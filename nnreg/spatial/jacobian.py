"""Jacobian determinant of ``phi(x) = x + u(x)`` by central differences — for monitoring and losses only.

The challenge's exact non-diffeomorphic volume (10 finite-difference schemes) lives in ``nnreg.evaluation``.
"""
from __future__ import annotations

import torch

from nnreg.spatial.precision import autocast_disabled, spatial_dtype, to_spatial
from nnreg.utilities.slabs import row_slabs


def jacobian_determinant(disp: torch.Tensor, slab_rows: int | None = None) -> torch.Tensor:
    """``det(I + grad u)`` per voxel, ``(B, H, W, D)``; central differences inside, one-sided at the border.

    float32 (float64 for a float64 field) whatever the field's dtype and the autocast context. ``slab_rows``:
    computed ``slab_rows`` rows of the first spatial axis at a time, each slab with its neighbouring row on either
    side where there is one (bitwise the same values; the temporaries, ~20 field-sized arrays, shrink to a slab's)."""
    if disp.dim() != 5 or disp.shape[1] != 3:
        raise ValueError(f"expected a displacement field (B, 3, H, W, D), got {tuple(disp.shape)}")
    if min(disp.shape[2:]) < 2:
        raise ValueError(f"every axis needs at least 2 voxels, got {tuple(disp.shape[2:])}")
    height = int(disp.shape[2])
    if slab_rows is not None and slab_rows < height:
        out = torch.empty((disp.shape[0], *disp.shape[2:]), dtype=spatial_dtype(disp), device=disp.device)
        for slab in row_slabs(height, max(1, int(slab_rows))):
            low, high = max(slab.start - 1, 0), min(slab.stop + 1, height)   # >= 2 rows: height >= 2 (checked above)
            out[:, slab] = jacobian_determinant(disp[:, :, low:high])[:, slab.start - low:slab.stop - low]
        return out
    with autocast_disabled(disp.device):
        grads = torch.gradient(to_spatial(disp), dim=(2, 3, 4))  # grads[d][:, c] = d u_c / d x_d
        j = [[grads[d][:, c] + (1.0 if c == d else 0.0) for d in range(3)] for c in range(3)]
        return (
            j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
        )
