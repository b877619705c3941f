"""HD95: the robust (95th percentile) Hausdorff distance of DeepMind's ``surface-distance``, per label.

Conventions: label maps in nibabel ``(i, j, k)`` order, unit (voxel) spacing as the official evaluator
(``spacing = np.ones(3)``); ``warped`` is the NN-warped moving label map.

Per label (official NaN rule as Dice: NaN when absent from fixed or unwarped moving):
1. crop both masks to the tight bounding box of their union (nothing outside can matter);
2. surface elements = corner points whose 2x2x2 neighbourhood code is neither 0 nor 255, each with the
   area of its marching-cubes surface (:mod:`nnreg.evaluation.surfels`);
3. distance of every surfel of one mask to the nearest surfel of the other (Euclidean distance transform
   of the other mask's surfel map);
4. sort by (distance, area), take the distance where the cumulative area fraction first reaches 0.95
   (``searchsorted``), for both directions, and return the larger one.
If the warped label vanished, the distances from the fixed surface are infinite and HD95 is ``inf``.
Only the crop differs from a whole-volume loop: one pass encodes every label and finds all boxes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

from nnreg.evaluation.overlap import LabelPair, label_pair, nanmean
from nnreg.evaluation.surfels import neighbour_codes, surfel_area_table

PERCENT = 95.0


def _surfels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean surfel map on the corner grid and the area of every corner."""
    codes = neighbour_codes(mask)
    return (codes != 0) & (codes != 255), surfel_area_table()[codes]


def _percentile_distance(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Area-weighted percentile: sort by (distance, area), first cumulative fraction >= percent."""
    if distances.size == 0:
        return float("inf")
    order = np.lexsort((areas, distances))
    d, a = distances[order], areas[order]
    cumulative = np.cumsum(a) / np.sum(a)
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(d[min(idx, len(d) - 1)])


def robust_hausdorff(mask_fixed: np.ndarray, mask_warped: np.ndarray, percent: float = PERCENT) -> float:
    """Surface-distance robust Hausdorff of two boolean masks (unit spacing); ``inf`` if one is empty."""
    union = mask_fixed | mask_warped
    if not union.any():
        return float("inf")
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(union))
    return _robust_hausdorff_cropped(mask_fixed[box], mask_warped[box], percent)


def _robust_hausdorff_cropped(gt: np.ndarray, pred: np.ndarray, percent: float) -> float:
    border_gt, area_gt = _surfels(gt)
    border_pred, area_pred = _surfels(pred)
    if not border_gt.any() or not border_pred.any():
        return float("inf")
    dist_to_gt = distance_transform_edt(~border_gt, sampling=(1.0, 1.0, 1.0))
    dist_to_pred = distance_transform_edt(~border_pred, sampling=(1.0, 1.0, 1.0))
    gt_to_pred = _percentile_distance(dist_to_pred[border_gt], area_gt[border_gt], percent)
    pred_to_gt = _percentile_distance(dist_to_gt[border_pred], area_pred[border_pred], percent)
    return max(gt_to_pred, pred_to_gt)


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def hd95_from_pair(pair: LabelPair, percent: float = PERCENT) -> list[float]:
    """HD95 of each label of an encoded :class:`LabelPair` (NaN/inf by the official rules)."""
    fixed_boxes, warped_boxes = pair.fixed.boxes(), pair.warped.boxes()
    scores = []
    for label, good in zip(pair.labels, pair.evaluable):
        if not good:
            scores.append(float("nan"))
            continue
        k = pair.code(label)
        if warped_boxes[k - 1] is None:  # the warped label vanished: no surface to reach
            scores.append(float("inf"))
            continue
        box = _union_box(fixed_boxes[k - 1], warped_boxes[k - 1])
        gt = pair.fixed.codes[box] == k
        pred = pair.warped.codes[box] == k
        scores.append(_robust_hausdorff_cropped(gt, pred, percent))
    return scores


def hd95_per_label(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[float] | None = None,
                   moving: np.ndarray | None = None) -> list[float]:
    """HD95 of each label in ``labels`` (default: every value in ``fixed``)."""
    return hd95_from_pair(label_pair(fixed, warped, labels, moving))


def hd95(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[float] | None = None,
         moving: np.ndarray | None = None) -> float:
    """Mean HD95 over ``labels``, ``nanmean`` as the official code (``inf`` if a warped label vanished)."""
    return nanmean(hd95_per_label(fixed, warped, labels, moving))
