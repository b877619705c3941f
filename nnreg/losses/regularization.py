"""Smoothness regulariser ``||grad u||^2`` of a displacement or velocity field.

Forward differences along each array axis, squared and averaged over voxels and components, then averaged
over the three axes — the ``Grad3d('l2')`` of VoxelMorph/TransMorph with which the paper's λ = 5-6 were tuned.
Units are the field's own voxel units on its own grid.
"""
from __future__ import annotations

import torch


def gradient_l2(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward-difference gradient of a (B, C, H, W, D) field (a scalar)."""
    if field.dim() != 5:
        raise ValueError(f"expected a field (B, C, H, W, D), got {tuple(field.shape)}")
    with torch.autocast(device_type=field.device.type, enabled=False):
        f = field.float()
        terms = []
        for axis in (2, 3, 4):
            n = f.shape[axis]
            if n < 2:
                terms.append(f.new_zeros(()))
                continue
            diff = f.narrow(axis, 1, n - 1) - f.narrow(axis, 0, n - 1)
            terms.append((diff * diff).mean())
        return (terms[0] + terms[1] + terms[2]) / 3.0
