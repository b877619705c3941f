"""The shared feature encoder and the feature pyramid (seed paper Fig. 1; EOIR).

Three Conv → InstanceNorm → PReLU blocks of widths (sc, 2·sc, sc) at the input resolution, applied with the
same weights to the moving and the fixed image; the pyramid is built by 2× average pooling (identical to
trilinear ×0.5 with cell-centred grids, and cheaper).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnreg.networks.blocks import ConvNormAct


class SharedEncoder(nn.Module):
    """Image (B, 1, ...) → features (B, sc, ...) at the same resolution."""

    def __init__(self, base_channels: int = 32, kernel_size: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        widths = [in_channels, base_channels, 2 * base_channels, base_channels]
        self.blocks = nn.ModuleList(
            ConvNormAct(widths[i], widths[i + 1], kernel_size) for i in range(len(widths) - 1)
        )
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
