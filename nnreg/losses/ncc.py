"""Local normalised cross-correlation (LNCC) over cubic windows, as in VoxelMorph / TransMorph / the seed paper.

For every voxel the window ``w^3`` around it (zero padding at the border, the window size kept constant, as the
reference implementations do) gives

    cc = cross^2 / (var_I * var_J + eps),   cross = sum(I J) - sum(I) sum(J) / n,   var_I = sum(I^2) - sum(I)^2 / n

and the loss is ``-mean(cc)`` (in [-1, 0]). The five window sums are one separable box filter (per axis a cumulative sum and a
difference: a few operations per voxel instead of ``w^3``), applied to all five maps in one batched call. Always evaluated in float32, also under bf16 autocast: the variances are differences of
large sums and lose every digit in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of ``x`` (N, C, H, W, D) over a ``window^3`` cube centred on each voxel, zeros outside.

    Per axis: zero-pad, cumulative sum, difference of the sums ``window`` apart (O(1) per voxel and axis; a
    single-channel ``conv3d`` is ~10x slower on CPUs). Float32 cumulative sums over a LUMIR axis (<= 224 voxels
    of values in [0, 1]) keep the window sums to ~1e-5 absolute.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the NCC window must be odd and >= 1, got {window}")
    if window == 1:
        return x
    pad = window // 2
    out = x
    for axis in range(3):
        dim = 2 + axis
        n = out.shape[dim]
        spec = [0] * 6
        spec[(2 - axis) * 2] = pad + 1          # F.pad lists the last dimension first
        spec[(2 - axis) * 2 + 1] = pad
        cumulative = torch.cumsum(F.pad(out, spec), dim)
        out = cumulative.narrow(dim, window, n) - cumulative.narrow(dim, 0, n)
    return out


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = EPS) -> torch.Tensor:
    """Per-voxel squared local correlation ``cc`` (B, 1, H, W, D) of two single-channel images (B, 1, H, W, D)."""
    if fixed.shape != warped.shape or fixed.dim() != 5 or fixed.shape[1] != 1:
        raise ValueError(f"expected two (B, 1, H, W, D) images of one shape, got {tuple(fixed.shape)} and "
                         f"{tuple(warped.shape)}")
    with torch.autocast(device_type=fixed.device.type, enabled=False):
        i = fixed.float()
        j = warped.float()
        b = i.shape[0]
        stacked = torch.cat([i, j, i * i, j * j, i * j], dim=0)        # (5B, 1, H, W, D)
        sums = box_sum(stacked, window)
        s_i, s_j, s_ii, s_jj, s_ij = sums.split(b, dim=0)
        n = float(window ** 3)
        cross = s_ij - s_i * s_j / n
        var_i = s_ii - s_i * s_i / n
        var_j = s_jj - s_j * s_j / n
        return cross * cross / (var_i * var_j + eps)


def local_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = EPS) -> torch.Tensor:
    """``-mean(local_ncc)``: the similarity loss (lower is better; -1 for identical images with texture)."""
    return -local_ncc(fixed, warped, window, eps).mean()
