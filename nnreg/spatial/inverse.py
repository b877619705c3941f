"""Inverting pull displacement fields: a fixed-point inversion for any field, the exact inverse of a velocity
cascade, and the inverse-consistency error.

Conventions (those of :mod:`nnreg.spatial`): fields are ``(B, 3, H, W, D)``, voxel units along the array axes, pull:
``phi_u(x) = x + u(x)`` and ``warped(x) = moving(x + u(x))``; ``compose(u, w)`` is ``phi_u o phi_w``. The inverse
``w`` of ``u`` satisfies ``phi_u(phi_w(y)) = y``, i.e. ``w(y) = -u(y + w(y))``; used as a pull field it warps the
*fixed* image onto the *moving* image, ``fixed(y + w(y))``, on the same grid (the moving image's when both images
share a grid). Fields are resampled with border padding, as everywhere in nnreg.

Fixed-point inversion: ``w <- -u(y + w(y))``, which is ``w <- w - r`` with the residual
``r = compose(u, w) = phi_u o phi_w - id``. It converges where ``|grad u| < 1`` along the path; since ``r(y)`` depends
on ``w(y)`` only, each voxel keeps the iterate with its smallest residual, so more iterations never make a voxel worse.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from nnreg.spatial.fields import compose, integrate_velocity, resize_field, upsample_field
from nnreg.spatial.precision import autocast_disabled, spatial_dtype, to_spatial

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InverseConsistency:
    """Inverse-consistency error in voxels: ``|phi_u o phi_w - id|`` (forward o inverse, over every voxel of the grid of
    ``w``) and ``|phi_w o phi_u - id|`` (inverse o forward, over the voxels ``x`` of the grid of ``u`` whose
    ``x + u(x)`` lies inside the grid, where ``w`` is defined), mean and max."""

    forward_inverse_mean: float
    forward_inverse_max: float
    inverse_forward_mean: float
    inverse_forward_max: float

    @property
    def mean(self) -> float:
        return max(self.forward_inverse_mean, self.inverse_forward_mean)

    @property
    def max(self) -> float:
        return max(self.forward_inverse_max, self.inverse_forward_max)

    def describe(self) -> str:
        return (f"inverse-consistency error (voxels): forward o inverse mean {self.forward_inverse_mean:.4f} max "
                f"{self.forward_inverse_max:.4f}; inverse o forward mean {self.inverse_forward_mean:.4f} max "
                f"{self.inverse_forward_max:.4f}")


def _check(field: torch.Tensor, name: str) -> None:
    if field.dim() != 5 or field.shape[1] != 3:
        raise ValueError(f"expected a displacement field {name} (B, 3, H, W, D), got {tuple(field.shape)}")


def inverse_consistency(u: torch.Tensor, w: torch.Tensor) -> InverseConsistency:
    """How far ``w`` is from the inverse of ``u`` (both ``(B, 3, H, W, D)`` on one grid), see the dataclass."""
    _check(u, "u")
    _check(w, "w")
    dtype = spatial_dtype(u, w)
    with torch.no_grad(), autocast_disabled(u.device):
        u, w = to_spatial(u, dtype), to_spatial(w, dtype)
        forward_inverse = compose(u, w).norm(dim=1)
        inverse_forward = compose(w, u).norm(dim=1)
        inside = _maps_inside(u)
        if bool(inside.any()):
            inverse_forward = inverse_forward[inside]
    return InverseConsistency(float(forward_inverse.mean()), float(forward_inverse.max()),
                              float(inverse_forward.mean()), float(inverse_forward.max()))


def _maps_inside(u: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, D)`` mask of voxels ``x`` with ``x + u(x)`` inside the grid (``w`` is only known there)."""
    inside = torch.ones_like(u[:, 0], dtype=torch.bool)
    for axis, size in enumerate(u.shape[2:]):
        ramp = torch.arange(size, device=u.device, dtype=u.dtype).view([-1 if a == axis else 1 for a in range(3)])
        target = u[:, axis] + ramp
        inside &= (target >= 0) & (target <= size - 1)
    return inside


def invert_displacement(u: torch.Tensor, initial: torch.Tensor | None = None, iterations: int = 50,
                        tolerance: float = 1e-3) -> torch.Tensor:
    """The inverse ``w`` of the pull field ``u`` by fixed-point iteration (see the module docstring).

    ``initial`` is a first estimate (e.g. :func:`cascade_inverse`; default ``-u``); iteration stops after
    ``iterations`` steps, when every voxel's residual is below ``tolerance`` voxels, or when no voxel improves by
    more than ``tolerance / 100`` any more (voxels where the iteration diverges, e.g. folds, keep their best).
    """
    _check(u, "u")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    with torch.no_grad(), autocast_disabled(u.device):
        u = to_spatial(u)
        w = (-u if initial is None else initial.to(u)).clone()
        if tuple(w.shape) != tuple(u.shape):
            raise ValueError(f"initial estimate {tuple(w.shape)} does not match the field {tuple(u.shape)}")
        best = w.clone()
        best_error = torch.full_like(u[:, :1], float("inf"))
        for step in range(iterations + 1):
            residual = compose(u, w)
            error = residual.norm(dim=1, keepdim=True)
            better = error < best_error
            gain = float(torch.where(better, best_error - error, torch.zeros_like(error)).max()) if step else 1.0
            best = torch.where(better, w, best)
            best_error = torch.where(better, error, best_error)
            if float(best_error.max()) < tolerance or step == iterations or gain < 0.01 * tolerance:
                break           # converged everywhere, out of iterations, or stalled (no voxel gains any more)
            w = w - residual
        logger.debug("fixed-point inversion: %d step(s), residual mean %.4g max %.4g voxels", step,
                     float(best_error.mean()), float(best_error.max()))
    return best


def cascade_inverse(velocities: Sequence[torch.Tensor], integration_steps: int,
                    size: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of a coarse-to-fine composition cascade, ``phi = phi_1 o exp(v_2) o ... `` level by level.

    ``velocities`` are coarse to fine, each grid twice the previous one. The forward field is built as
    ``u_l = compose(upsample(u_{l-1}), exp(v_l))`` (``phi_l = phi_{l-1} o exp(v_l)``), so its inverse is the reversed
    composition of ``exp(-v)``: ``w_l = compose(exp(-v_l), upsample(w_{l-1}))``. ``size`` resizes the result (the
    cascade's finest grid may be coarser than the input).
    """
    if not velocities:
        raise ValueError("no velocities")
    if integration_steps < 1:
        raise ValueError("cascade_inverse needs integrated velocities (integration_steps >= 1)")
    with torch.no_grad():
        w: torch.Tensor | None = None
        for v in velocities:
            _check(v, "v")
            step = integrate_velocity(-v.float(), integration_steps)
            w = step if w is None else compose(step, upsample_field(w))
        assert w is not None
        return resize_field(w, size) if size is not None else w
