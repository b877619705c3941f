"""Fold ensembling of displacement fields that never folds more than the best single fold.

Conventions: fields are ``(1, 3, H, W, D)`` torch tensors on the network grid, voxel units, pull
(``warped(x) = moving(x + u(x))``), as :mod:`nnreg.spatial` defines them.

Choice (see documentation/prediction.md, "Ensembling"): the folds' displacements are **averaged**, with a
guard. Averaging is what nnU-Net users expect, costs nothing extra, and for fields that are each
diffeomorphic and describe the same anatomy it smooths the fold-specific parts and reduces folding (measured in
tests/inference/test_ensemble.py; the document gives the numbers). Averaging *can* fold when folds disagree
strongly (the set of matrices with positive determinant is not convex), so the guard measures the **official
NDV** (:func:`nnreg.evaluation.jacobian.ndv_absolute`: the ten one-sided and tetrahedral Jacobian schemes of the
Learn2Reg/LUMIR evaluator, every voxel of the network grid) of the mean; when it is not zero it measures every
fold too, and if the mean has a higher NDV than the best fold, that fold (the lowest NDV; the one closest to the
mean among equals) is returned and a warning says so. The result therefore never has a higher official NDV than
the best single fold. In the usual case (the mean has NDV 0) the guard costs one NDV of one field.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from nnreg.evaluation.jacobian import ndv_absolute

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleReport:
    """What the ensembling did, for logs and tests: NDV in voxels (official schemes, network grid)."""

    num_folds: int
    ndv_mean: float
    ndv_folds: tuple[float, ...]
    used: str  # "single", "mean" or "fold:<index>"


def official_ndv(disp: torch.Tensor) -> float:
    """Non-diffeomorphic volume (voxels) of a ``(1, 3, H, W, D)`` field by the official ten-scheme definition."""
    return ndv_absolute(disp[0].permute(1, 2, 3, 0).detach().cpu().numpy())


def ensemble_displacements(fields: list[torch.Tensor]) -> tuple[torch.Tensor, EnsembleReport]:
    """Average the folds' fields; the best single fold instead if the average has a higher official NDV."""
    if not fields:
        raise ValueError("no fields to ensemble")
    if len(fields) == 1:
        return fields[0], EnsembleReport(1, -1.0, (), "single")
    mean = torch.stack(fields).mean(0)
    in_mean = official_ndv(mean)
    if in_mean == 0:  # the usual case: no fold can do better, skip the per-fold NDVs
        return mean, EnsembleReport(len(fields), 0.0, (), "mean")
    per_fold = tuple(official_ndv(f) for f in fields)
    if in_mean <= min(per_fold):
        return mean, EnsembleReport(len(fields), in_mean, per_fold, "mean")
    distances = [float((f - mean).square().sum()) for f in fields]
    best = min(range(len(fields)), key=lambda k: (per_fold[k], distances[k]))
    logger.warning("the folds disagree: their mean field has a non-diffeomorphic volume of %.3f voxels, more than "
                   "the best fold's (folds: %s); using fold #%d", in_mean,
                   ", ".join(f"{v:.3f}" for v in per_fold), best)
    return fields[best], EnsembleReport(len(fields), in_mean, per_fold, f"fold:{best}")
