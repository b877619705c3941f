"""Operations on displacement fields: composition, scaling-and-squaring integration, resizing between grids.

Every function returns a float32 field (float64 if an input is float64) whatever the input dtype and the autocast
context (see :mod:`nnreg.spatial.precision`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from nnreg.spatial.precision import autocast_disabled, spatial_dtype, to_spatial
from nnreg.spatial.warp import warp


def compose(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Compose two pull fields on the same grid: ``(u o v)(x) = v(x) + u(x + v(x))``.

    Warping by the result equals warping by ``u`` first and then by ``v``: ``m(x + (u o v)(x))``
    is ``(m o phi_u)`` sampled at ``phi_v(x)``. In transformation terms ``phi_{u o v} = phi_u o phi_v``.
    ``u`` is resampled with border padding.
    """
    dtype = spatial_dtype(u, v)
    with autocast_disabled(v.device):
        v = to_spatial(v, dtype)
        return v + warp(to_spatial(u, dtype), v, padding="border")


def integrate_velocity(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring: ``u = exp(v) - id`` (voxel units).

    ``v`` is scaled by ``2**-steps`` and composed with itself ``steps`` times; ``steps=0`` returns ``v``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    v = to_spatial(v)
    if steps == 0:
        return v
    with autocast_disabled(v.device):
        u = v * (1.0 / 2**steps)
        for _ in range(steps):
            u = u + warp(u, u, padding="border")
    return u


def resize_field(disp: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a field to grid ``size`` (trilinear) and rescale each vector component by ``new / old`` size.

    The grids share their physical extent with voxel centres at ``(i + 0.5) * spacing`` (``align_corners=False``),
    the convention of nnreg's preprocessing. No anti-aliasing is applied when downsampling.
    """
    size = tuple(int(s) for s in size)
    old = tuple(int(s) for s in disp.shape[2:])
    if len(size) != 3:
        raise ValueError(f"size must have 3 entries, got {size}")
    disp = to_spatial(disp)
    if size == old:
        return disp
    with autocast_disabled(disp.device):
        resized = F.interpolate(disp, size=size, mode="trilinear", align_corners=False)
        factors = torch.tensor([n / o for n, o in zip(size, old)], device=disp.device, dtype=disp.dtype)
        return resized * factors.view(1, 3, 1, 1, 1)


def upsample_field(disp: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample a field by an integer ``factor`` per axis (vectors times ``factor``), see :func:`resize_field`."""
    return resize_field(disp, [s * factor for s in disp.shape[2:]])
