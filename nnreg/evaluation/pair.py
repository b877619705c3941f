"""Evaluate one registration pair: every metric of a method list from one displacement field.

Conventions: fields ``(H, W, D, 3)`` in voxel units along array axes, pull convention
``warped(x) = moving(x + u(x))``, arrays in nibabel ``(i, j, k)`` order, float64 like the official code.
The nearest-neighbour warp is computed once per pair and shared by labels and landmarks; label maps are
encoded once per label list and shared by Dice and HD95.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnreg.evaluation.config import EvaluationMethod
from nnreg.evaluation.jacobian import ndv, non_positive_jacobians, num_foldings_l2r, sdlogj
from nnreg.evaluation.landmarks import tre
from nnreg.evaluation.overlap import LabelPair, dice_from_pair, label_pair, nanmean
from nnreg.evaluation.surface import hd95_from_pair
from nnreg.evaluation.warp import nearest_indices, warp_with_indices

NDV_MASKS = ("moving", "fixed")


@dataclass
class PairInputs:
    """Ground truth of one pair; anything a requested metric does not need may stay ``None``."""

    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None
    landmarks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # dest -> (fixed, moving)
    fixed_image: np.ndarray | None = None
    moving_image: np.ndarray | None = None
    evaluation_mask: np.ndarray | None = None  # the official masked_evaluation mask (fixed 'masks' file)


class Warper:
    """Nearest-neighbour warping with one interpolation per field (identity fast path for a zero field)."""

    def __init__(self, disp: np.ndarray) -> None:
        self.disp = disp
        self._indices: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._zero = not np.any(disp)

    def __call__(self, moving: np.ndarray) -> np.ndarray:
        moving = np.asarray(moving, dtype=np.float64)
        if self._zero and moving.shape == self.disp.shape[:3]:
            return moving.copy()  # integer coordinates sample themselves exactly
        if self._indices is None or self._shape != moving.shape:
            self._indices = nearest_indices(self.disp, moving.shape)
            self._shape = moving.shape
        return warp_with_indices(moving, self._indices)


def _need(value: Any, what: str, metric: str) -> Any:
    if value is None:
        raise ValueError(f"metric {metric!r} needs {what}")
    return value


def ndv_mask_of(inputs: PairInputs, which: str) -> np.ndarray | None:
    """The NDV mask: ``image > 0`` of the moving (LUMIR 2024) or fixed (LUMIR 2025) image; None = all ones."""
    if which not in NDV_MASKS:
        raise ValueError(f"ndv mask must be one of {NDV_MASKS}, got {which!r}")
    image = inputs.moving_image if which == "moving" else inputs.fixed_image
    return None if image is None else np.asarray(image) > 0


def evaluate_methods(disp: np.ndarray, methods: list[EvaluationMethod], inputs: PairInputs,
                     ndv_mask: str = "moving") -> dict[str, dict[str, Any]]:
    """Official per-case dict ``{method name: {"mean": m, "detailed": d}}`` (plus ``num_foldings`` for sdlogj)."""
    disp = np.asarray(disp, dtype=np.float64)
    warp = Warper(disp)
    warped_labels: np.ndarray | None = None
    encoded: dict[tuple[float, ...], LabelPair] = {}
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        metric = method.metric
        if metric in ("dice", "hd95"):
            fixed = _need(inputs.fixed_labels, "fixed labels", metric)
            moving = _need(inputs.moving_labels, "moving labels", metric)
            if warped_labels is None:
                warped_labels = warp(moving)
            key = method.labels if method.labels is not None else tuple(float(v) for v in np.unique(fixed))
            if key not in encoded:
                encoded[key] = label_pair(fixed, warped_labels, list(key), moving)
            detailed = dice_from_pair(encoded[key]) if metric == "dice" else hd95_from_pair(encoded[key])
            out[method.name] = {"mean": nanmean(detailed), "detailed": detailed}
        elif metric == "tre":
            dest = method.dest or "landmarks"
            if dest not in inputs.landmarks:
                raise ValueError(f"metric 'tre' needs fixed and moving landmarks ({dest})")
            fixed_lms, moving_lms = inputs.landmarks[dest]
            value = tre(fixed_lms, warp(moving_lms))
            out[method.name] = {"mean": value, "detailed": value}
        elif metric == "ndv":
            value = ndv(disp, ndv_mask_of(inputs, ndv_mask))
            out[method.name] = {"mean": value, "detailed": value}
        elif metric == "sdlogj":
            mask = inputs.evaluation_mask if method.masked else None
            value = sdlogj(disp, mask)
            out[method.name] = {"mean": value, "detailed": value}
            folds = num_foldings_l2r(disp)
            out["num_foldings"] = {"mean": folds, "detailed": folds}
        elif metric == "non_positive_jacobians":
            count = float(non_positive_jacobians(disp))
            out[method.name] = {"mean": count, "detailed": count}
        else:
            raise ValueError(f"unknown metric {metric!r}")
    return out
