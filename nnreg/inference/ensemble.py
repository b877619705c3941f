"""Fold ensembling of displacement fields that keeps the result free of folding.

Conventions: fields are ``(1, 3, H, W, D)`` torch tensors on the network grid, voxel units, pull
(``warped(x) = moving(x + u(x))``), as :mod:`nnreg.spatial` defines them.

Choice (see documentation/prediction.md, "Ensembling"): the folds' displacements are **averaged**, with a
guard. Averaging is what nnU-Net users expect, costs nothing extra, and for fields that are each
diffeomorphic and describe the same anatomy the mean Jacobian matrix stays orientation-preserving; we
measured the NDV of averaged fields against the single folds (tests/inference/test_ensemble.py, the document
gives the numbers). Averaging *can* fold when folds disagree strongly (the set of matrices with positive
determinant is not convex), so the guard counts voxels with ``det(I + grad u) <= 0`` (central differences,
:func:`nnreg.spatial.jacobian_determinant`) in the mean and in every fold; if the mean folds more than the
worst fold, the fold closest to the mean (the medoid, itself a network output) is returned instead and a
warning says so. The result therefore never folds more than a single fold does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from nnreg.spatial import jacobian_determinant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleReport:
    """What the ensembling did, for logs and tests."""

    num_folds: int
    folded_voxels_mean: int
    folded_voxels_folds: tuple[int, ...]
    used: str  # "single", "mean" or "medoid:<index>"


def folded_voxels(disp: torch.Tensor) -> int:
    """Number of voxels where ``det(I + grad u) <= 0`` (the monitoring proxy of the challenge's NDV)."""
    return int((jacobian_determinant(disp) <= 0).sum())


def ensemble_displacements(fields: list[torch.Tensor]) -> tuple[torch.Tensor, EnsembleReport]:
    """Average the folds' fields; fall back to the medoid fold if the average folds more than any fold."""
    if not fields:
        raise ValueError("no fields to ensemble")
    if len(fields) == 1:
        return fields[0], EnsembleReport(1, -1, (), "single")
    mean = torch.stack(fields).mean(0)
    in_mean = folded_voxels(mean)
    if in_mean == 0:  # the usual case: nothing to compare, skip the per-fold determinants
        return mean, EnsembleReport(len(fields), 0, (), "mean")
    per_fold = tuple(folded_voxels(f) for f in fields)
    if in_mean <= max(per_fold):
        return mean, EnsembleReport(len(fields), in_mean, per_fold, "mean")
    distances = [float((f - mean).square().sum()) for f in fields]
    best = min(range(len(fields)), key=distances.__getitem__)
    logger.warning("the folds disagree: their mean field folds at %d voxels (folds: %s); using fold #%d, the one "
                   "closest to the mean", in_mean, ", ".join(map(str, per_fold)), best)
    return fields[best], EnsembleReport(len(fields), in_mean, per_fold, f"medoid:{best}")
