"""CA: co-attention between the moving and the fixed feature streams, after Chen et al., CAR-Net (2021).

A bilinear affinity between every fixed and every moving position, ``S = (Wq f)ᵀ (Wk m)``, is normalised by a
softmax in both directions: each fixed position gathers the moving features it matches and vice versa
("attention from both streams applied to each"). The gathered features are gated (sigmoid, per position) and
fused with the stream's own features by a 1³ convolution, added residually. Projections are shared by both
streams because the encoder is shared. Attention is computed with ``scaled_dot_product_attention`` (memory-
efficient kernels, no N×N matrix kept in inference), but its cost is still O(N²) in the number of positions,
so CA belongs at the coarse pyramid levels only (1/16 of 160×224×192 = 1680 positions).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: positions per level up to which CA is considered affordable: 1/16 and 1/8 of 160×224×192 have 1 680 and
#: 13 440 (1.8e8 affinities per pair and direction); 1/4 has 107 520 (1.2e10), where the O(N²) attention would
#: cost more than the rest of the network.
AFFORDABLE_POSITIONS = 16384


def affordable_co_attention_levels(shape: Sequence[int], n_levels: int, skip_levels: int = 0,
                                   max_positions: int = AFFORDABLE_POSITIONS) -> list[int]:
    """The estimated pyramid levels (0 = input resolution) of an input ``shape`` whose number of positions
    ``prod(shape) / 8**level`` is at most ``max_positions``: the value for the plans key ``co_attention_levels``."""
    voxels = math.prod(int(s) for s in shape)
    return [lv for lv in range(skip_levels, n_levels) if voxels / 8**lv <= max_positions]


class CoAttention(nn.Module):
    """(f, m) → (f', m') of the same shapes; ``key_channels`` is the width of the affinity space."""

    def __init__(self, channels: int, key_channels: int | None = None) -> None:
        super().__init__()
        key_channels = key_channels or max(channels // 2, 8)
        self.query = nn.Conv3d(channels, key_channels, 1, bias=False)
        self.key = nn.Conv3d(channels, key_channels, 1, bias=False)
        self.gate = nn.Conv3d(channels, 1, 1)
        self.fuse = nn.Conv3d(2 * channels, channels, 1)

    def _attend(self, query_src: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Features of ``other`` gathered for every position of ``query_src`` (B, C, ...)."""
        b, c = other.shape[:2]
        q = self.query(query_src).flatten(2).transpose(1, 2)  # (B, N, K)
        k = self.key(other).flatten(2).transpose(1, 2)  # (B, N, K)
        v = other.flatten(2).transpose(1, 2)  # (B, N, C)
        gathered = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return gathered.transpose(1, 2).reshape(b, c, *other.shape[2:])

    def _combine(self, own: torch.Tensor, gathered: torch.Tensor) -> torch.Tensor:
        gated = gathered * torch.sigmoid(self.gate(gathered))
        return own + self.fuse(torch.cat([own, gated], dim=1))

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        to_fixed = self._attend(fixed, moving)
        to_moving = self._attend(moving, fixed)
        return self._combine(fixed, to_fixed), self._combine(moving, to_moving)
