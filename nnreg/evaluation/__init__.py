"""nnreg's evaluation: the Learn2Reg/LUMIR metrics, numerically identical to the official evaluator.

Conventions: displacement fields are ``(H, W, D, 3)`` in voxel units along the array axes, pull convention
``warped(x) = moving(x + u(x))``, arrays in nibabel ``(i, j, k)`` order. One implementation of each metric
for the CLI (``nnreg_evaluate``), the trainer's validation and the predictor:

- :func:`evaluate_pair` - all requested metrics of one pair, as ``{metric: value}``;
- :func:`dice`, :func:`hd95` (per label: :func:`dice_per_label`, :func:`hd95_per_label`), :func:`tre`,
  :func:`ndv`, :func:`sdlogj`, :func:`non_positive_jacobians`, :func:`warp_nearest`;
- :func:`evaluate_folder` - a folder of displacement files against configs -> official ``metrics.json`` dict.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nnreg.evaluation.config import EvaluationMethod, load_config, merge_configs, parse_config
from nnreg.evaluation.jacobian import jacobian_determinant, ndv, non_positive_jacobians, sdlogj
from nnreg.evaluation.landmarks import tre
from nnreg.evaluation.overlap import dice, dice_per_label
from nnreg.evaluation.pair import PairInputs, evaluate_methods
from nnreg.evaluation.runner import EvaluationResult, evaluate_folder
from nnreg.evaluation.surface import hd95, hd95_per_label
from nnreg.evaluation.warp import warp_nearest

DEFAULT_METRICS = ("dice", "hd95", "tre", "ndv")

__all__ = [
    "DEFAULT_METRICS", "EvaluationResult", "dice", "dice_per_label", "evaluate_folder", "evaluate_pair",
    "hd95", "hd95_per_label", "jacobian_determinant", "load_config", "merge_configs", "ndv",
    "non_positive_jacobians", "parse_config", "sdlogj", "tre", "warp_nearest",
]


def evaluate_pair(disp: np.ndarray, fixed_labels: np.ndarray | None = None,
                  moving_labels: np.ndarray | None = None, fixed_landmarks: np.ndarray | None = None,
                  moving_landmarks: np.ndarray | None = None, moving_image: np.ndarray | None = None,
                  fixed_image: np.ndarray | None = None, labels: Sequence[float] | None = None,
                  metrics: Sequence[str] | None = None, ndv_mask: str = "moving") -> dict[str, float]:
    """Official metric values of one pair, keyed by metric id (``dice``, ``hd95``, ``tre``, ``ndv``, ...).

    ``metrics=None`` evaluates what the inputs allow: Dice and HD95 with both label maps, TRE with both
    landmark volumes, NDV always (the trainer's validation passes whatever ground truth it has).
    ``labels=None`` evaluates every value of ``fixed_labels`` (background included). NDV uses
    ``moving_image > 0`` (``ndv_mask="moving"``, LUMIR 2024) or ``fixed_image > 0`` (``"fixed"``, LUMIR
    2025) as mask, all voxels when that image is not given. ``sdlogj`` also yields ``num_foldings``.
    A metric whose inputs are missing raises ``ValueError``; NaN/inf follow the official rules.
    """
    if metrics is None:
        metrics = [m for m, ok in (("dice", fixed_labels is not None and moving_labels is not None),
                                   ("hd95", fixed_labels is not None and moving_labels is not None),
                                   ("tre", fixed_landmarks is not None and moving_landmarks is not None),
                                   ("ndv", True)) if ok]
    label_tuple = tuple(float(v) for v in labels) if labels is not None else None
    methods = [EvaluationMethod(name=m, metric=m, labels=label_tuple if m in ("dice", "hd95") else None,
                                dest="landmarks" if m == "tre" else None) for m in metrics]
    landmarks = {}
    if fixed_landmarks is not None and moving_landmarks is not None:
        landmarks["landmarks"] = (np.asarray(fixed_landmarks), np.asarray(moving_landmarks))
    inputs = PairInputs(fixed_labels=fixed_labels, moving_labels=moving_labels, landmarks=landmarks,
                        fixed_image=fixed_image, moving_image=moving_image)
    results = evaluate_methods(disp, methods, inputs, ndv_mask=ndv_mask)
    return {name: float(value["mean"]) for name, value in results.items()}
