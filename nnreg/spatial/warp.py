"""Warping an image or label map by a voxel-unit pull displacement field (see :mod:`nnreg.spatial`)."""
from __future__ import annotations

import torch

from nnreg.spatial.grid import sampling_grid
from nnreg.spatial.precision import autocast_disabled
from nnreg.spatial.sampling import grid_sample

_MODES = {"bilinear", "nearest"}
_PADDINGS = {"zeros", "border"}


Box = tuple[slice, slice, slice]


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding: str = "zeros",
         box: Box | None = None) -> torch.Tensor:
    """Return ``image(x + disp(x))`` on the grid of ``disp`` (with ``box``: for the voxels of that box only, the
    same values as ``warp(...)[..., box]``; points mapped outside the box still sample the whole image. Used where a
    loss needs a sub-volume, :class:`nnreg.inference.instance_optimization.Stage`).

    ``image`` is ``(B, C, H', W', D')`` (batch 1 is broadcast over the field's batch), ``disp`` is
    ``(B, 3, H, W, D)`` in voxel units of the image grid (normally ``H' = H`` etc.). ``mode="bilinear"`` is
    (tri)linear interpolation, ``"nearest"`` is for label maps. ``padding="zeros"`` samples 0 outside, ``"border"``
    the edge value. Sampling runs in float32 (float64 for a float64 field) whatever the dtypes and the autocast
    context; the result has the image's dtype (integer labels and bf16 features are sampled in float32 and cast
    back).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {sorted(_PADDINGS)}, got {padding!r}")
    if image.dim() != 5:
        raise ValueError(f"expected an image (B, C, H, W, D), got {tuple(image.shape)}")
    if tuple(image.shape[2:]) != tuple(disp.shape[2:]):
        raise ValueError(f"image grid {tuple(image.shape[2:])} differs from field grid {tuple(disp.shape[2:])}")
    batch = disp.shape[0]
    if image.shape[0] != batch:
        if image.shape[0] != 1:
            raise ValueError(f"batch sizes differ: image {image.shape[0]}, field {batch}")
        image = image.expand(batch, *image.shape[1:])
    original_dtype = image.dtype
    with autocast_disabled(disp.device):
        grid = sampling_grid(disp, box)
        out = grid_sample(image.to(grid.dtype), grid, mode=mode, padding_mode=padding)
    return out if out.dtype == original_dtype else out.to(original_dtype)

