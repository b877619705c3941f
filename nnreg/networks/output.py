"""What every registration network returns: the full-resolution field plus per-level fields for deep supervision."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LevelOutput:
    """One cascade level, on that level's grid and in that level's voxel units.

    ``velocity``: the stationary velocity predicted at this level (after bilateral filtering, before integration);
    for non-integrating networks the predicted field increment. The gradient penalty applies to it.
    ``displacement``: the accumulated pull field at this level; NCC compares the fixed image downsampled by
    ``scale`` with the moving image warped by it. ``scale``: downsampling factor of this grid relative to the input.
    """

    velocity: torch.Tensor
    displacement: torch.Tensor
    scale: int = 1

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (``level["velocity"]``) for code that treats levels as mappings."""
        if key not in ("velocity", "displacement", "scale"):
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class RegistrationOutput:
    """``displacement``: (B, 3, H, W, D) voxel-unit pull field on the input grid (see ``nnreg.spatial``).

    ``levels``: coarse to fine, one :class:`LevelOutput` per estimated level (the finest may be coarser than the
    input when the network skips its finest levels; ``displacement`` is then the upsampled finest field).
    """

    displacement: torch.Tensor
    levels: list[LevelOutput] = field(default_factory=list)
