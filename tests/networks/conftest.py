"""Shared helpers for the network tests: tiny smooth image pairs and architecture dicts at 4 levels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnreg.networks import default_architecture, named_architecture

TINY_SHAPE = (32, 40, 32)  # divisible by 8 = 2**(4 - 1)
TINY_LEVELS = 4


def image_pair(shape: tuple[int, int, int] = TINY_SHAPE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth random images in [0, 1], (1, 1, *shape)."""
    g = torch.Generator().manual_seed(seed)
    images = F.avg_pool3d(torch.rand(2, 1, *shape, generator=g), 3, 1, 1)
    return images[:1].contiguous(), images[1:].contiguous()


def tiny_architecture(name: str, narrow: bool = True) -> dict:
    """The named variant with a 4-level cascade; ``narrow`` divides the cascade's widths by 4 to keep tests fast
    (every structural choice — LK, CA, BF, cascade, skipped levels — is kept). VoxelMorph is unchanged."""
    arch = named_architecture(name, n_levels=TINY_LEVELS)
    if narrow and arch["network_class"] == "CascadeRegNet":
        kw = arch["kwargs"]
        kw["base_channels"] = max(4, kw["base_channels"] // 4)
        kw["flow_channels"] = 2 * kw["base_channels"]
        kw["flow_mid_channels"] = 8
    return arch


def fold_test_architecture(cascade: str) -> dict:
    """A narrow backbone for the folding test."""
    return default_architecture(TINY_LEVELS, base_channels=8, cascade=cascade)
