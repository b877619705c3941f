"""``nnreg.spatial.sampling.grid_sample``: a batch-1 3D CPU call split over the threads gives ``F.grid_sample``'s
values and grid gradient bitwise, and is split at all (PyTorch's 3D CPU kernel parallelises over the batch only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnreg.spatial.sampling as sampling
from nnreg.spatial import warp


@pytest.mark.parametrize("shape", [(17, 20, 16), (24, 9, 30)])     # 17 rows: the last slab is padded
@pytest.mark.parametrize("mode,padding", [("bilinear", "zeros"), ("bilinear", "border"), ("nearest", "zeros")])
def test_split_equals_one_call(two_threads, shape, mode, padding) -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 12, 14, 11, generator=g, requires_grad=True)
    grid = (torch.rand(1, *shape, 3, generator=g) * 2.4 - 1.2).requires_grad_(True)
    expected = F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)
    got = sampling.grid_sample(image, grid, mode, padding)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    if mode == "bilinear":
        weights = torch.rand(expected.shape, generator=g)
        want = torch.autograd.grad((expected * weights).sum(), (image, grid))
        have = torch.autograd.grad((got * weights).sum(), (image, grid))
        assert torch.equal(have[1], want[1])                          # grid: the same arithmetic per voxel
        torch.testing.assert_close(have[0], want[0], rtol=1e-5, atol=1e-5)   # image: summed over the slabs


def test_batch_one_cpu_calls_are_split_over_the_threads(two_threads, monkeypatch) -> None:
    batches = []
    original = F.grid_sample

    def recording(image, grid, **kwargs):
        batches.append(int(grid.shape[0]))
        return original(image, grid, **kwargs)

    monkeypatch.setattr(sampling.F, "grid_sample", recording)
    image = torch.rand(1, 1, 20, 24, 22)
    field = torch.randn(1, 3, 20, 24, 22)
    out = warp(image, field)
    assert batches == [2]
    batches.clear()
    torch.set_num_threads(1)
    assert torch.equal(warp(image, field), out)
    assert batches == [1]


def test_small_grids_and_batches_go_straight_through(two_threads, monkeypatch) -> None:
    batches = []
    original = F.grid_sample
    monkeypatch.setattr(sampling.F, "grid_sample",
                        lambda image, grid, **kw: batches.append(int(grid.shape[0])) or original(image, grid, **kw))
    warp(torch.rand(1, 1, 6, 6, 6), torch.zeros(1, 3, 6, 6, 6))                  # 216 voxels
    warp(torch.rand(2, 1, 20, 24, 22), torch.zeros(2, 3, 20, 24, 22))            # batch 2
    assert batches == [1, 2]


def test_slabs_are_capped_when_the_image_needs_a_gradient(monkeypatch) -> None:
    """Each slab's backward zero-fills an image-sized gradient: with many threads, a differentiable image (scaling
    and squaring) is split into at most MAX_SLABS_WITH_IMAGE_GRADIENT slabs; a constant image into one per thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        batches = []
        original = F.grid_sample
        monkeypatch.setattr(sampling.F, "grid_sample",
                            lambda image, grid, **kw: batches.append(int(grid.shape[0])) or original(image, grid, **kw))
        field = torch.randn(1, 3, 24, 20, 18)
        warp(field, field)
        warp(field.clone().requires_grad_(True), field)
        with torch.no_grad():
            warp(field.clone().requires_grad_(True), field)
    finally:
        torch.set_num_threads(previous)
    assert batches == [8, sampling.MAX_SLABS_WITH_IMAGE_GRADIENT, 8]
