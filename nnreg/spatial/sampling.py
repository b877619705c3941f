"""``grid_sample`` for 3D volumes that uses every CPU thread.

PyTorch's CPU kernel for 5D ``grid_sample`` (forward and backward) parallelises over the batch only: a batch-1
warp, which is every warp of a refinement, a prediction or a batch-1 training step, runs on one core however many
threads torch has (measured: 2 threads, batch 1, an 80x112x96 3-channel field: 34 ms forward and 44 ms backward,
the same as on 1 thread; split in two, 18 ms and 24 ms). :func:`grid_sample` splits the **output** grid of such a
call along its first spatial axis into ``torch.get_num_threads()`` slabs and passes them as a batch, the image
expanded (a stride-0 view, no copy) over it. Every output voxel samples the same image at the same point through
the same arithmetic, so the values and the gradient with respect to the grid are bitwise those of one call; the
gradient with respect to the image is summed over the slabs (another summation order, still deterministic for a
fixed thread count). CUDA tensors, batches larger than 1 and small grids go straight to ``F.grid_sample``.

Conventions are ``F.grid_sample``'s with ``align_corners=True`` (the only setting nnreg uses, see
:mod:`nnreg.spatial.grid`): image ``(1, C, H', W', D')``, grid ``(1, H, W, D, 3)``, output ``(1, C, H, W, D)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# below this many output voxels one call is cheaper than the split's bookkeeping
MIN_SPLIT_VOXELS = 4096
# at most this many slabs when the image needs a gradient: its backward zero-fills one image-sized gradient per slab
# before summing them (16 threads and a 1 mm velocity field would be 1.3 GB a warp)
MAX_SLABS_WITH_IMAGE_GRADIENT = 4


def _slabs(image: torch.Tensor, grid: torch.Tensor) -> int:
    """How many slabs to split the call into (1: do not split)."""
    if image.device.type != "cpu" or grid.dim() != 5 or grid.shape[0] != 1 or image.shape[0] != 1:
        return 1
    voxels = int(grid.shape[1]) * int(grid.shape[2]) * int(grid.shape[3])
    if voxels < MIN_SPLIT_VOXELS:
        return 1
    slabs = min(torch.get_num_threads(), int(grid.shape[1]))
    if image.requires_grad and torch.is_grad_enabled():
        slabs = min(slabs, MAX_SLABS_WITH_IMAGE_GRADIENT)
    return max(1, slabs)


def grid_sample(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros") -> torch.Tensor:
    """``F.grid_sample(image, grid, mode, padding_mode, align_corners=True)``, split over the CPU threads for a
    batch-1 3D call (module docstring)."""
    slabs = _slabs(image, grid)
    if slabs == 1:
        return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    height, width, depth = (int(s) for s in grid.shape[1:4])
    rows = math.ceil(height / slabs)
    slabs = math.ceil(height / rows)                  # no empty slab (e.g. 5 rows on 4 threads: 2 + 2 + 1)
    extra = rows * slabs - height
    if extra:                                         # pad the last slab; its extra rows are cut off below
        grid = F.pad(grid, (0, 0, 0, 0, 0, 0, 0, extra))
    batched = grid.reshape(slabs, rows, width, depth, 3)
    out = F.grid_sample(image.expand(slabs, *image.shape[1:]), batched, mode=mode, padding_mode=padding_mode,
                        align_corners=True)           # (slabs, C, rows, W, D)
    channels = int(image.shape[1])
    out = out.transpose(0, 1).reshape(1, channels, slabs * rows, width, depth)
    return out[:, :, :height] if extra else out
