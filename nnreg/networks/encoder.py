"""The shared feature encoder and the feature pyramid (seed paper Fig. 1; EOIR).

Three Conv → InstanceNorm → PReLU blocks of widths (sc, 2·sc, sc) at the input resolution, applied with the
same weights to the moving and the fixed image; the pyramid is built by 2× average pooling (identical to
trilinear ×0.5 with cell-centred grids, and cheaper).

LK (``kernel_size`` K ≥ 5): by default every convolution *is* a large-kernel block (the paper: "we replace
conventional convolutions ... with large kernel convolutions"); no block of (1 → sc, sc → 2sc, 2sc → sc) has equal
input and output widths, so none gets LKU-Net's identity branch. ``large_kernel_identity=True`` uses LKU-Net's
layout instead: each block is a 3³ conv that changes the width followed by a K³ + 3³ + 1³ + identity block at
constant width (six blocks instead of three; the identity merges into the K³ kernel at inference).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnreg.networks.blocks import ConvNormAct


class SharedEncoder(nn.Module):
    """Image (B, 1, ...) → features (B, sc, ...) at the same resolution."""

    def __init__(self, base_channels: int = 32, kernel_size: int = 3, in_channels: int = 1,
                 large_kernel_identity: bool = False) -> None:
        super().__init__()
        widths = [in_channels, base_channels, 2 * base_channels, base_channels]
        blocks: list[nn.Module] = []
        for i in range(len(widths) - 1):
            if large_kernel_identity and kernel_size > 3:
                blocks += [ConvNormAct(widths[i], widths[i + 1], 3), ConvNormAct(widths[i + 1], widths[i + 1],
                                                                                 kernel_size)]
            else:
                blocks.append(ConvNormAct(widths[i], widths[i + 1], kernel_size))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = base_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:  # rebinding x frees each intermediate as soon as the next exists
            x = block(x)
        return x


def feature_pyramid(features: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """``[features, pool(features), pool²(features), ...]``, fine to coarse, ``n_levels`` entries."""
    pyramid = [features]
    for _ in range(n_levels - 1):
        pyramid.append(F.avg_pool3d(pyramid[-1], 2))
    return pyramid
