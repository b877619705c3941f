"""Dice overlap per label, with the official NaN rule and ``nanmean`` over labels.

Conventions: label maps in nibabel ``(i, j, k)`` order; ``warped`` is the moving label map resampled onto
the fixed grid with nearest neighbour (:mod:`nnreg.evaluation.warp`).

Official rule (``L2R_LUMIR_Eval``): for each label of the list (background 0 included) the score is NaN if
the label is absent from the fixed map or from the *unwarped* moving map, else 2|F∩W| / (|F| + |W|).
The pair score is ``nanmean`` over the list (NaN when every label is NaN).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnreg.evaluation.labels import EncodedLabels, encode, label_values


def nanmean(values: Sequence[float]) -> float:
    """``np.nanmean`` without the all-NaN warning (the result is NaN then, as in the official code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, dtype=np.float64))) if len(values) else float("nan")


@dataclass(frozen=True)
class LabelPair:
    """Fixed and warped label maps encoded once against a label list, plus which labels are evaluable."""

    labels: list[float]
    fixed: EncodedLabels
    warped: EncodedLabels
    evaluable: list[bool]

    def code(self, label: float) -> int:
        return self.fixed.index_of(label) + 1


def label_pair(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[float] | None,
               moving: np.ndarray | None = None) -> LabelPair:
    """Encode the maps; ``labels=None`` means every value of ``fixed`` (background included).

    A label is evaluable when present in ``fixed`` and in the unwarped ``moving`` (when given; without
    it only the fixed presence is checked).
    """
    if labels is None:
        labels = [float(v) for v in np.unique(fixed)]
    labels = [float(l) for l in labels]
    values = label_values(labels)
    enc_fixed = encode(fixed, values)
    fixed_counts = enc_fixed.counts()
    moving_counts = encode(moving, values).counts() if moving is not None else fixed_counts
    evaluable = []
    for label in labels:
        k = int(np.searchsorted(values, label))
        evaluable.append(bool(fixed_counts[k] > 0 and moving_counts[k] > 0))
    return LabelPair(labels, enc_fixed, encode(warped, values), evaluable)


def dice_from_pair(pair: LabelPair) -> list[float]:
    """Dice of each label of an encoded :class:`LabelPair` (NaN by the official rule)."""
    n = len(pair.fixed.values) + 1
    f_codes, w_codes = pair.fixed.codes.ravel(), pair.warped.codes.ravel()
    f_counts = np.bincount(f_codes, minlength=n)
    w_counts = np.bincount(w_codes, minlength=n)
    inter = np.bincount(f_codes[f_codes == w_codes], minlength=n)
    scores = []
    for label, good in zip(pair.labels, pair.evaluable):
        k = pair.code(label)
        scores.append(float(2 * inter[k] / (f_counts[k] + w_counts[k])) if good else float("nan"))
    return scores


def dice_per_label(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[float] | None = None,
                   moving: np.ndarray | None = None) -> list[float]:
    """Dice of each label in ``labels`` (default: every value in ``fixed``)."""
    return dice_from_pair(label_pair(fixed, warped, labels, moving))


def dice(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[float] | None = None,
         moving: np.ndarray | None = None) -> float:
    """Mean Dice over ``labels``, ``nanmean`` as the official code."""
    return nanmean(dice_per_label(fixed, warped, labels, moving))
