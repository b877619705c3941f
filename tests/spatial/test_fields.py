"""Composition, scaling-and-squaring, field resizing and the Jacobian, each against an independent reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.spatial import compose, integrate_velocity, jacobian_determinant, resize_field, upsample_field, warp
from tests.spatial.conftest import smooth_field, smooth_random, to_torch


def test_warping_by_composition_equals_warping_twice():
    shape = (24, 26, 22)
    u = to_torch(smooth_field(shape, 2.0, seed=30, sigma=4.0))
    v = to_torch(smooth_field(shape, 2.0, seed=40, sigma=4.0))
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5), slice(5, -5))  # samples stay inside the grid
    # A linear image is interpolated exactly, so both routes must agree to rounding error.
    idx = torch.from_numpy(np.indices(shape, dtype=np.float64))
    ramp = (0.3 * idx[0] - 0.2 * idx[1] + 0.1 * idx[2] + 1.0)[None, None]
    once = warp(ramp, compose(u, v), padding="border")
    twice = warp(warp(ramp, u, padding="border"), v, padding="border")
    torch.testing.assert_close(once[inner], twice[inner], atol=1e-10, rtol=0)
    wrong_order = warp(ramp, compose(v, u), padding="border")
    assert (wrong_order - twice)[inner].abs().max() > 1e-3  # the test can tell the two orders apart
    # A smooth image: the routes differ only by the interpolation error of the intermediate image.
    image = to_torch(smooth_random(shape, 3.0, 1.0, seed=5)[None])
    once = warp(image, compose(u, v), padding="border")
    twice = warp(warp(image, u, padding="border"), v, padding="border")
    assert (once - twice)[inner].abs().max() < 0.05
    assert (once - image)[inner].abs().max() > 0.2


def test_compose_formula_against_map_coordinates():
    shape = (12, 14, 10)
    u = smooth_field(shape, 2.0, seed=1)
    v = smooth_field(shape, 2.0, seed=2)
    coords = np.indices(shape, dtype=np.float64) + v
    expected = v + np.stack([ndimage.map_coordinates(u[c], coords, order=1, mode="nearest") for c in range(3)])
    np.testing.assert_allclose(compose(to_torch(u), to_torch(v))[0].numpy(), expected, atol=1e-10)


def euler_reference(v: np.ndarray, n_steps: int) -> np.ndarray:
    """phi' = v(phi) by explicit Euler steps with map_coordinates (border extrapolation)."""
    identity = np.indices(v.shape[1:], dtype=np.float64)
    u = np.zeros_like(v)
    for _ in range(n_steps):
        at = identity + u
        u = u + np.stack([ndimage.map_coordinates(v[c], at, order=1, mode="nearest") for c in range(3)]) / n_steps
    return u


def test_scaling_and_squaring_matches_many_euler_steps():
    shape = (20, 22, 18)
    v = smooth_field(shape, 3.0, seed=7, sigma=5.0)
    expected = euler_reference(v, 512)
    inner = (slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    error = {s: np.abs(integrate_velocity(to_torch(v), steps=s)[0].numpy() - expected)[inner].max() for s in (2, 7)}
    nonlinear_part = np.abs(v - expected)[inner].max()  # what integration adds beyond u = v
    assert nonlinear_part > 0.4
    # The floor (~0.03) is the linear interpolation of the intermediate fields, not the step count.
    assert error[7] < 0.06 < error[2]
    np.testing.assert_array_equal(integrate_velocity(to_torch(v), steps=0)[0].numpy(), v)


def test_exp_of_negative_velocity_inverts():
    shape = (20, 22, 18)
    v = to_torch(smooth_field(shape, 3.0, seed=8, sigma=5.0))
    forward, backward = integrate_velocity(v), integrate_velocity(-v)
    assert forward.abs().max() > 2.0
    assert compose(forward, backward)[:, :, 4:-4, 4:-4, 4:-4].abs().max() < 0.08


def test_resize_rescales_vectors_and_round_trips():
    shape = (10, 12, 8)
    # An affine field is reproduced exactly by linear interpolation inside the grid.
    idx = np.indices(shape, dtype=np.float64)
    affine = np.stack([0.1 * idx[1] + 1.0, -0.05 * idx[0] + 0.02 * idx[2], 0.3 * np.ones(shape)])
    field = to_torch(affine)
    up = upsample_field(field)
    assert up.shape == (1, 3, 20, 24, 16)
    # A constant displacement of 0.3 voxels is 0.6 fine voxels; physical size is preserved.
    torch.testing.assert_close(up[0, 2], torch.full((20, 24, 16), 0.6, dtype=torch.float64))
    back = resize_field(up, shape)
    torch.testing.assert_close(back[..., 1:-1, 1:-1, 1:-1], field[..., 1:-1, 1:-1, 1:-1])
    smooth = to_torch(smooth_field(shape, 2.0, seed=9, sigma=3.0))
    assert (resize_field(upsample_field(smooth), shape) - smooth).abs().max() < 0.1
    assert resize_field(smooth, shape) is smooth


def test_resize_uses_cell_centred_alignment():
    # Fine voxel centre j maps to coarse coordinate (j + 0.5) / 2 - 0.5: a ramp u = i on the coarse grid becomes
    # (in coarse units) i_f / 2 - 0.25 in the interior, i.e. 2 * that in fine units.
    coarse = torch.zeros(1, 3, 6, 4, 4, dtype=torch.float64)
    coarse[:, 0] = torch.arange(6, dtype=torch.float64).view(6, 1, 1)
    fine = upsample_field(coarse)
    i_f = torch.arange(12, dtype=torch.float64)
    torch.testing.assert_close(fine[0, 0, 1:-1, 0, 0], 2 * (i_f[1:-1] / 2 - 0.25))


def test_jacobian_of_affine_fields():
    shape = (9, 10, 11)
    idx = torch.from_numpy(np.indices(shape, dtype=np.float64))
    a = torch.tensor([[0.1, 0.2, 0.0], [-0.1, 0.05, 0.3], [0.0, 0.1, -0.2]], dtype=torch.float64)
    disp = torch.einsum("cd,dhwz->chwz", a, idx)[None] + 1.5
    expected = torch.det(torch.eye(3, dtype=torch.float64) + a)
    torch.testing.assert_close(jacobian_determinant(disp), torch.full((1, *shape), float(expected), dtype=torch.float64))
    fold = torch.zeros(1, 3, *shape, dtype=torch.float64)
    fold[:, 0] = -2.0 * idx[0]  # phi_0 = -x_0: orientation reversed
    assert torch.all(jacobian_determinant(fold) < 0)
    torch.testing.assert_close(jacobian_determinant(torch.zeros(2, 3, *shape)), torch.ones(2, *shape))


def test_jacobian_rejects_bad_shapes():
    with pytest.raises(ValueError):
        jacobian_determinant(torch.zeros(1, 2, 4, 4, 4))


@pytest.mark.parametrize("shape", [(13, 9, 11), (2, 5, 6), (3, 4, 4)])
def test_the_jacobian_by_slabs_is_bitwise_the_whole(shape):
    """``slab_rows`` computes the determinant a few rows of the first axis at a time (with a neighbouring row on each
    side): the same values, for slabs that do and do not divide the rows, one-row slabs, a batch of 2 and float64."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        disp = torch.randn(2, 3, *shape, dtype=dtype)
        whole = jacobian_determinant(disp)
        for rows in (1, 2, 5, 100):
            sliced = jacobian_determinant(disp, slab_rows=rows)
            assert sliced.dtype == whole.dtype and torch.equal(sliced, whole)
