"""warp() against scipy.ndimage.map_coordinates, the evaluator's reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.spatial import sampling_grid, warp
from tests.spatial.conftest import smooth_field, smooth_random, to_torch


def reference_warp(image: np.ndarray, disp: np.ndarray, order: int, mode: str) -> np.ndarray:
    coords = np.indices(image.shape, dtype=np.float64) + disp
    return ndimage.map_coordinates(image, coords, order=order, mode=mode, cval=0.0)


@pytest.mark.parametrize("padding,scipy_mode", [("zeros", "grid-constant"), ("border", "nearest")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_warp_matches_map_coordinates(shape, padding, scipy_mode, dtype):
    image = smooth_random(shape, 1.0, 1.0, seed=1) + 0.5
    disp = smooth_field(shape, amplitude=4.0, seed=10)  # large enough to leave the grid near the border
    expected = reference_warp(image, disp, order=1, mode=scipy_mode)
    out = warp(to_torch(image[None]).to(dtype), to_torch(disp).to(dtype), padding=padding)
    assert out.shape == (1, 1, *shape)
    assert out.dtype == dtype
    np.testing.assert_allclose(out[0, 0].double().numpy(), expected, atol=1e-4)


def test_nearest_warp_of_labels_is_exact_away_from_ties(shape):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, size=shape).astype(np.int64)
    disp = smooth_field(shape, amplitude=3.0, seed=20)
    coords = np.indices(shape, dtype=np.float64) + disp
    tie = np.any(np.abs(coords - np.floor(coords) - 0.5) < 1e-3, axis=0)
    assert tie.mean() < 0.01
    expected = reference_warp(labels, disp, order=0, mode="grid-constant")
    out = warp(torch.from_numpy(labels)[None, None], to_torch(disp), mode="nearest")
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out[0, 0].numpy()[~tie], expected[~tie])


def test_zero_field_is_identity_and_integer_shift_moves_content(shape):
    image = torch.rand(2, 3, *shape, dtype=torch.float64)
    zero = torch.zeros(2, 3, *shape, dtype=torch.float64)
    torch.testing.assert_close(warp(image, zero), image)
    shift = zero.clone()
    shift[:, 1] = 2.0  # pull from j + 2
    out = warp(image, shift)
    torch.testing.assert_close(out[..., :-2, :], image[..., 2:, :])
    assert torch.all(out[..., -2:, :] == 0)


def test_channel_order_follows_array_axes(shape):
    image = torch.zeros(1, 1, *shape, dtype=torch.float64)
    image[0, 0, 5, 6, 7] = 1.0
    for axis in range(3):
        disp = torch.zeros(1, 3, *shape, dtype=torch.float64)
        disp[:, axis] = 1.0
        out = warp(image, disp)
        index = [5, 6, 7]
        index[axis] -= 1
        assert out[0, 0, index[0], index[1], index[2]] == 1.0


def test_batch_one_image_is_broadcast_and_grid_is_cached(shape):
    image = torch.rand(1, 1, *shape)
    disp = torch.randn(3, 3, *shape)
    out = warp(image, disp)
    assert out.shape == (3, 1, *shape)
    torch.testing.assert_close(out[1], warp(image, disp[1:2])[0])
    g1, g2 = sampling_grid(disp), sampling_grid(disp)
    torch.testing.assert_close(g1, g2)


def test_cache_created_in_inference_mode_is_usable_with_autograd():
    shape = (5, 6, 7)
    with torch.inference_mode():
        warp(torch.rand(1, 1, *shape, dtype=torch.float16 if False else torch.float32), torch.zeros(1, 3, *shape))
    disp = torch.zeros(1, 3, *shape, requires_grad=True)
    warp(torch.rand(1, 1, *shape), disp).sum().backward()
    assert disp.grad is not None


def test_invalid_arguments_raise(shape):
    image = torch.rand(1, 1, *shape)
    with pytest.raises(ValueError):
        warp(image, torch.zeros(1, 3, *shape), mode="cubic")
    with pytest.raises(ValueError):
        warp(image, torch.zeros(1, 3, *shape), padding="reflection")
    with pytest.raises(ValueError):
        warp(image, torch.zeros(1, 3, 4, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("box", [None, (slice(1, 7), slice(0, 6), slice(2, 5))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sampling_grid_and_its_gradient_are_the_plain_formulas_bitwise(dtype, box, channels_last) -> None:
    """The channel-by-channel grid (and its hand-written backward) against ``identity + scale * disp`` in (k, j, i)
    order by permute, flip and addcmul, autograd's gradient: the same bits, any batch, box, dtype and layout; the
    grid itself is checked independently by the map_coordinates tests above."""
    from nnreg.spatial.grid import _grid_constants

    shape = (8, 6, 5)
    disp = torch.randn((2, 3, *shape), dtype=dtype, generator=torch.Generator().manual_seed(4)) * 3
    if channels_last:
        disp = disp.contiguous(memory_format=torch.channels_last_3d)
    identity, scale = _grid_constants(shape, torch.device("cpu"), dtype)
    ours, plain = disp.clone().requires_grad_(True), disp.clone().requires_grad_(True)
    cut = plain if box is None else plain[:, :, box[0], box[1], box[2]]
    ident = identity if box is None else identity[:, box[0], box[1], box[2]]
    expected = torch.addcmul(ident, cut.permute(0, 2, 3, 4, 1).flip(-1), scale)
    grid = sampling_grid(ours, box)
    assert grid.dtype == dtype and torch.equal(grid, expected)
    weights = torch.randn(grid.shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
    (grid * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.equal(ours.grad, plain.grad)
