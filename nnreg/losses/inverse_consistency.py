"""Inverse-consistency penalty of a pair of opposite registrations (symmetric training, ``symmetric_training``).

Conventions (``nnreg.spatial``): ``u_ab`` is the pull field on the grid of image ``b`` that warps ``a`` onto
``b`` (``phi_ab(x) = x + u_ab(x)`` maps ``b``'s voxels into ``a``), ``u_ba`` the opposite one, both in voxels
of the same grid. Inverse consistency means ``phi_ab o phi_ba = id`` and ``phi_ba o phi_ab = id``; the residuals
are ``compose(u_ab, u_ba)`` and ``compose(u_ba, u_ab)`` (border padding). The penalty is the mean squared length
of both residuals in voxels², computed in float32 (also under bf16 autocast).
"""
from __future__ import annotations

import torch

from nnreg.spatial import compose


def inverse_consistency_residuals(u_ab: torch.Tensor, u_ba: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi_ab o phi_ba - id, phi_ba o phi_ab - id)``, each (B, 3, H, W, D) in voxels."""
    if u_ab.shape != u_ba.shape or u_ab.dim() != 5 or u_ab.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, H, W, D) fields of one shape, got {tuple(u_ab.shape)}, "
                         f"{tuple(u_ba.shape)}")
    return compose(u_ab, u_ba), compose(u_ba, u_ab)


def inverse_consistency_loss(u_ab: torch.Tensor, u_ba: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``(|phi_ab o phi_ba - id|² + |phi_ba o phi_ab - id|²) / 2`` (voxels², a scalar)."""
    with torch.autocast(device_type=u_ab.device.type, enabled=False):
        first, second = inverse_consistency_residuals(u_ab.float(), u_ba.float())
        return 0.5 * (first.square().sum(1).mean() + second.square().sum(1).mean())
