"""Warping an image or label map by a voxel-unit pull displacement field (see :mod:`nnreg.spatial`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnreg.spatial.grid import identity_grid, sampling_grid
from nnreg.spatial.precision import autocast_disabled

_MODES = {"bilinear", "nearest"}
_PADDINGS = {"zeros", "border"}


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Return ``image(x + disp(x))`` on the grid of ``disp``.

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
        grid = sampling_grid(disp)
        out = F.grid_sample(image.to(grid.dtype), grid, mode=mode, padding_mode=padding, align_corners=True)
    return out if out.dtype == original_dtype else out.to(original_dtype)


Box = tuple[slice, slice, slice]


def warp_box(image: torch.Tensor, disp: torch.Tensor, box: Box) -> torch.Tensor:
    """``warp(image, disp)[..., box]`` computed for the voxels of ``box`` only (``(B, C, h, w, d)``; trilinear, zeros
    outside): the field is cropped, the moving image is not, so points mapped outside the box still sample it. Used
    where a loss only needs a sub-volume (:class:`nnreg.inference.instance_optimization.Stage`)."""
    if image.dim() != 5 or disp.dim() != 5 or disp.shape[1] != 3:
        raise ValueError(f"expected an image (B, C, H, W, D) and a field (B, 3, H, W, D), got {tuple(image.shape)} "
                         f"and {tuple(disp.shape)}")
    if tuple(image.shape[2:]) != tuple(disp.shape[2:]):
        raise ValueError(f"image grid {tuple(image.shape[2:])} differs from field grid {tuple(disp.shape[2:])}")
    shape = tuple(int(s) for s in disp.shape[2:])
    with autocast_disabled(disp.device):
        dtype = torch.float64 if disp.dtype == torch.float64 else torch.float32
        identity = identity_grid(shape, disp.device, dtype)[:, box[0], box[1], box[2]]  # type: ignore[arg-type]
        scale = torch.tensor([2.0 / max(s - 1, 1) for s in shape[::-1]], device=disp.device, dtype=dtype)
        part = disp[:, :, box[0], box[1], box[2]].to(dtype).permute(0, 2, 3, 4, 1).flip(-1)   # (k, j, i) order
        grid = torch.addcmul(identity, part, scale)
        out = F.grid_sample(image.to(dtype).expand(disp.shape[0], *image.shape[1:]), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    return out if out.dtype == image.dtype else out.to(image.dtype)
