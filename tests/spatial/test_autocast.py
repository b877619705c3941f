"""Spatial operations compute in float32 whatever the autocast context and the input dtype (issue 21, item 2).

Under the trainer's bf16 autocast on CUDA the flow heads return bf16 velocities; grids, integration, composition,
warps and resizing must still run in float32 (a bf16 identity grid is off by up to a quarter voxel at 80 voxels).
CPU autocast with ``dtype=torch.bfloat16`` stands in for CUDA autocast here; every operation is compared with the
same operation on the float32 values outside autocast.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from nnreg.spatial import (
    compose,
    identity_grid,
    integrate_velocity,
    invert_displacement,
    jacobian_determinant,
    resize_field,
    sampling_grid,
    upsample_field,
    warp,
)
from tests.spatial.conftest import smooth_field, smooth_random

SHAPE = (32, 40, 36)


def _bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _field(amplitude: float, seed: int) -> torch.Tensor:
    """A smooth random field (1, 3, *SHAPE), float32."""
    return torch.from_numpy(smooth_field(SHAPE, amplitude, seed=seed, sigma=4.0)).float()[None]


def _image(seed: int, channels: int = 1) -> torch.Tensor:
    return torch.stack([torch.from_numpy(smooth_random(SHAPE, 2.0, 1.0, seed=seed + c)).float()
                        for c in range(channels)])[None]


FIELD_OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "integrate_velocity": lambda u, v: integrate_velocity(v, 7),
    "integrate_velocity_0_steps": lambda u, v: integrate_velocity(v, 0),
    "compose": compose,
    "resize_field": lambda u, v: resize_field(v, (16, 20, 18)),
    "upsample_field": lambda u, v: upsample_field(v),
    "jacobian_determinant": lambda u, v: jacobian_determinant(v),
    "invert_displacement": lambda u, v: invert_displacement(v, iterations=5),
}


@pytest.mark.parametrize("name", sorted(FIELD_OPERATIONS))
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float32])
def test_field_operations_are_float32_under_bf16_autocast(name: str, input_dtype: torch.dtype) -> None:
    operation = FIELD_OPERATIONS[name]
    u, v = _field(2.0, seed=3).to(input_dtype), _field(3.0, seed=11).to(input_dtype)
    want = operation(u.float(), v.float())                 # float32 values, no autocast
    with _bf16_autocast():
        got = operation(u, v)
    assert got.dtype == torch.float32, f"{name} returned {got.dtype}"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sampling_grid_of_a_bf16_field_is_the_float32_grid() -> None:
    velocity = _field(3.0, seed=5).bfloat16()
    with _bf16_autocast():
        zero = sampling_grid(torch.zeros_like(velocity))
        grid = sampling_grid(velocity)
        identity = identity_grid(SHAPE)
    assert zero.dtype == grid.dtype == identity.dtype == torch.float32
    exact = identity_grid(SHAPE)
    assert torch.equal(zero[0], exact[0]) and torch.equal(identity, exact)
    torch.testing.assert_close(grid, sampling_grid(velocity.float()), atol=1e-6, rtol=0)
    # the float32 identity is exact to rounding: voxel p of an axis of size S at 2 p / (S - 1) - 1
    ramp = torch.arange(SHAPE[2], dtype=torch.float64) * 2 / (SHAPE[2] - 1) - 1
    torch.testing.assert_close(exact[0, 0, 0, :, 0].double(), ramp, atol=1e-7, rtol=0)


def test_warps_sample_in_float32_and_keep_the_image_dtype() -> None:
    disp = _field(3.0, seed=7)
    image = _image(seed=1)
    features = _image(seed=2, channels=4).bfloat16()
    field = _field(2.0, seed=9).bfloat16()
    bf16_disp = disp.bfloat16()
    with _bf16_autocast():
        got_image = warp(image, bf16_disp)
        got_image_f32 = warp(image, disp)
        got_features = warp(features, bf16_disp, padding="border")
        got_field = warp(field, bf16_disp, padding="border")
    assert got_image.dtype == got_image_f32.dtype == torch.float32
    torch.testing.assert_close(got_image, warp(image, bf16_disp.float()), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_image_f32, warp(image, disp), atol=1e-5, rtol=0)
    # bf16 features (and a bf16 field warped like an image) keep their dtype for the network, but are sampled in
    # float32 on the float32 grid: the same values as the float32 warp, rounded once
    assert got_features.dtype == got_field.dtype == torch.bfloat16
    want_features = warp(features.float(), bf16_disp.float(), padding="border").bfloat16()
    assert torch.equal(got_features, want_features)
    assert torch.equal(got_field, warp(field.float(), bf16_disp.float(), padding="border").bfloat16())


def test_float64_stays_float64() -> None:
    v = _field(3.0, seed=13).double()
    with _bf16_autocast():
        u = integrate_velocity(v, 7)
        grid = sampling_grid(v)
    assert u.dtype == grid.dtype == torch.float64
    torch.testing.assert_close(u, integrate_velocity(v, 7), atol=1e-12, rtol=0)
