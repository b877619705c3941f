"""Inverse fields: fixed-point inversion against analytic inverses and scipy, the cascade inverse, the IC error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.spatial import (cascade_inverse, compose, integrate_velocity, inverse_consistency, invert_displacement,
                           upsample_field)
from tests.spatial.conftest import smooth_field, to_torch


def _identity(shape: tuple[int, int, int]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def test_inverse_of_an_affine_map_matches_the_analytic_inverse() -> None:
    """phi(x) = A (x - c) + c + b has the inverse A^-1 (y - c - b) + c; compare inside the grid."""
    shape = (24, 28, 20)
    angle = 0.08
    a = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]) * 1.04
    c = (np.array(shape) - 1) / 2.0
    b = np.array([0.7, -0.4, 0.3])
    x = _identity(shape).reshape(3, -1)
    u = (a @ (x - c[:, None]) + c[:, None] + b[:, None] - x).reshape(3, *shape)
    expected = (np.linalg.inv(a) @ (x - c[:, None] - b[:, None]) + c[:, None] - x).reshape(3, *shape)
    w = invert_displacement(to_torch(u), iterations=100, tolerance=1e-8)[0].numpy()
    target = _identity(shape) + expected        # where y + w(y) lands: must stay away from the border extrapolation
    inside = np.all([(target[i] > 1) & (target[i] < shape[i] - 2) for i in range(3)], axis=0)
    assert inside.mean() > 0.6
    assert np.abs(w - expected)[:, inside].max() < 1e-6


def test_forward_after_inverse_is_identity_checked_with_scipy() -> None:
    """A smooth random diffeomorphism (|u| <= 2.5 voxels): u(y + w(y)) + w(y) ~ 0, evaluated by map_coordinates."""
    shape = (20, 24, 18)
    u = smooth_field(shape, amplitude=2.5, seed=3)
    w = invert_displacement(to_torch(u), iterations=60)[0].numpy()
    coords = _identity(shape) + w
    u_at = np.stack([ndimage.map_coordinates(u[c], coords, order=1, mode="nearest") for c in range(3)])
    residual = np.linalg.norm(u_at + w, axis=0)
    assert residual.mean() < 1e-3 and residual.max() < 1e-2
    naive = np.linalg.norm(np.stack([ndimage.map_coordinates(u[c], _identity(shape) - u, order=1, mode="nearest")
                                     for c in range(3)]) - u, axis=0)
    assert residual.mean() < naive.mean() / 20          # far better than the first-order guess -u


def test_inverse_consistency_reports_both_directions() -> None:
    """forward o inverse is solved exactly; inverse o forward also carries the trilinear interpolation error of w
    between voxels, small for a smooth field."""
    shape = (16, 18, 14)
    u = to_torch(smooth_field(shape, amplitude=2.0, seed=5, sigma=5.0)).float()
    w = invert_displacement(u, iterations=60)
    good = inverse_consistency(u, w)
    bad = inverse_consistency(u, -u)
    assert good.forward_inverse_max < 1e-2 and good.inverse_forward_mean < 0.03 and good.inverse_forward_max < 0.1
    assert bad.mean > 10 * good.mean and bad.max > 5 * good.max
    assert "mean" in good.describe()
    zero = inverse_consistency(torch.zeros_like(u), torch.zeros_like(u))
    assert zero.mean == 0.0 and zero.max == 0.0


def test_more_iterations_never_make_a_voxel_worse() -> None:
    u = to_torch(smooth_field((14, 16, 12), amplitude=3.0, seed=7)).float()
    errors = [compose(u, invert_displacement(u, iterations=n)).norm(dim=1) for n in (0, 2, 10)]
    assert torch.all(errors[1] <= errors[0] + 1e-6) and torch.all(errors[2] <= errors[1] + 1e-6)
    assert torch.equal(invert_displacement(u, iterations=0), -u)


def test_cascade_inverse_is_the_reversed_composition_of_negative_exponentials() -> None:
    """Build a forward field exactly as CascadeRegNet composes its levels; the velocity inverse nearly inverts it."""
    torch.manual_seed(0)
    coarse = to_torch(smooth_field((8, 10, 8), amplitude=1.0, seed=11, sigma=2.0)).float()
    fine = to_torch(smooth_field((16, 20, 16), amplitude=1.0, seed=12, sigma=3.0)).float()
    u = compose(upsample_field(integrate_velocity(coarse, 7)), integrate_velocity(fine, 7))
    w = cascade_inverse([coarse, fine], 7)
    assert w.shape == u.shape
    from_velocities = inverse_consistency(u, w)
    first_order = inverse_consistency(u, -u)
    assert from_velocities.forward_inverse_mean < first_order.forward_inverse_mean / 5
    assert from_velocities.forward_inverse_mean < 0.08   # exp(-v) inverts exp(v) up to interpolation error
    resized = cascade_inverse([coarse, fine], 7, size=(32, 40, 32))
    assert resized.shape == (1, 3, 32, 40, 32)
    with pytest.raises(ValueError):
        cascade_inverse([coarse], 0)
