"""Deep supervision over the cascade levels: NCC + λ·‖∇v‖² at every level, level weights halving from fine to coarse.

The network returns its levels coarse -> fine, each with the displacement (and, for integrating networks, the
velocity) at that level's resolution in that level's voxel units. Level ``l`` is scored by the local NCC between
the fixed image and the moving image warped by that level's displacement, both downsampled to the level's grid
(repeated trilinear halving with ``align_corners=False``: a 2x2x2 box average, the network's own pyramid), plus
the gradient regulariser of the level's velocity (its displacement when the network has no velocity).
Weights: finest level 1, then 1/2, 1/4, ... (the paper's 1, 1/2, 1/4, 1/8, 1/16). With deep supervision off,
only the final full-resolution displacement is scored, regularising the displacement itself.

``similarity="mind"`` scores each level by the MIND-SSC loss (:mod:`nnreg.losses.mind`) instead of local NCC, for
contrast-agnostic training: neighbour dilation 2 voxels on the finest level, 1 on the coarser ones (whose voxels
are at least twice as large), patch radius 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from nnreg.losses.mind import mind_loss
from nnreg.losses.ncc import local_ncc_loss
from nnreg.losses.regularization import gradient_l2
from nnreg.losses.similarity import SIMILARITIES
from nnreg.spatial import warp


def level_weights(num_levels: int) -> list[float]:
    """Deep-supervision weights ordered coarse -> fine: ``[2^-(n-1), ..., 1/2, 1]``."""
    if num_levels < 1:
        raise ValueError(f"need at least one level, got {num_levels}")
    return [0.5 ** (num_levels - 1 - k) for k in range(num_levels)]


@dataclass
class LevelLoss:
    """The unweighted terms of one level (for logging) and its weight."""

    shape: tuple[int, ...]
    weight: float
    ncc: torch.Tensor        # the similarity loss (local NCC, or MIND-SSC with similarity="mind")
    reg: torch.Tensor


def _pyramid(image: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """``image`` resampled to each of ``shapes`` (coarse -> fine), each level from the next finer one."""
    out: list[torch.Tensor] = []
    current = image
    for shape in reversed(shapes):
        if tuple(current.shape[2:]) != tuple(shape):
            current = F.interpolate(current, size=tuple(shape), mode="trilinear", align_corners=False)
        out.append(current)
    return out[::-1]


def _levels(output: Any, deep_supervision: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(displacement, field to regularise) per supervised level, coarse -> fine."""
    levels = list(getattr(output, "levels", None) or [])
    if not deep_supervision or not levels:
        return [(output.displacement, output.displacement)]
    pairs = []
    for level in levels:
        velocity = getattr(level, "velocity", None)
        pairs.append((level.displacement, velocity if velocity is not None else level.displacement))
    return pairs


class DeepSupervisedRegistrationLoss:
    """``sum_l w_l (λ_ncc · NCC_l + λ_reg · ‖∇v_l‖²)`` over the network's levels."""

    def __init__(self, lambda_ncc: float = 1.0, lambda_reg: float = 6.0, ncc_window: int = 9,
                 deep_supervision: bool = True, similarity: str = "lncc") -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r} (known: {', '.join(SIMILARITIES)})")
        self.lambda_ncc = float(lambda_ncc)
        self.lambda_reg = float(lambda_reg)
        self.ncc_window = int(ncc_window)
        self.deep_supervision = bool(deep_supervision)
        self.similarity = similarity

    def _similarity(self, fixed: torch.Tensor, warped: torch.Tensor, finest: bool) -> torch.Tensor:
        if self.similarity == "mind":
            return mind_loss(fixed, warped, radius=1, dilation=2 if finest else 1)
        return local_ncc_loss(fixed, warped, self.ncc_window)

    def terms(self, moving: torch.Tensor, fixed: torch.Tensor, output: Any) -> list[LevelLoss]:
        """The per-level terms, coarse -> fine."""
        levels = _levels(output, self.deep_supervision)
        shapes = [tuple(d.shape[2:]) for d, _ in levels]
        weights = level_weights(len(levels))
        moving_pyr = _pyramid(moving, shapes)
        fixed_pyr = _pyramid(fixed, shapes)
        out = []
        for k, ((disp, reg_field), w, m, f, shape) in enumerate(zip(levels, weights, moving_pyr, fixed_pyr, shapes)):
            warped = warp(m.float(), disp.float())          # float32 even if the network ran under bf16
            similarity = self._similarity(f, warped, finest=k == len(levels) - 1)
            out.append(LevelLoss(shape, w, similarity, gradient_l2(reg_field)))
        return out

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, output: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, {"ncc": finest-level NCC loss, "reg": finest-level regulariser}) for logging."""
        terms = self.terms(moving, fixed, output)
        total = sum(t.weight * (self.lambda_ncc * t.ncc + self.lambda_reg * t.reg) for t in terms)
        finest = terms[-1]
        return total, {"ncc": float(finest.ncc.detach()), "reg": float(finest.reg.detach())}
