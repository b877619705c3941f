"""Label maps encoded against a label list, so every per-label statistic is one pass over the volume.

Conventions: arrays in nibabel ``(i, j, k)`` order; label values compare as the official evaluator's
``volume == label`` (float64 volume from nibabel, label from the config list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class EncodedLabels:
    """``codes[x] = k + 1`` where ``volume[x] == values[k]``, else 0; ``values`` sorted and unique."""

    values: np.ndarray
    codes: np.ndarray

    def counts(self) -> np.ndarray:
        """Voxel count of each value (index k for ``values[k]``)."""
        return np.bincount(self.codes.ravel(), minlength=len(self.values) + 1)[1:]

    def boxes(self) -> list[tuple[slice, ...] | None]:
        """Tight bounding box of each value, ``None`` when absent."""
        from scipy.ndimage import find_objects    # imported here: see nnreg.evaluation.warp

        found = find_objects(self.codes, max_label=len(self.values))
        return list(found) + [None] * (len(self.values) - len(found))

    def index_of(self, label: float) -> int:
        return int(np.searchsorted(self.values, label))


def label_values(labels: Sequence[float]) -> np.ndarray:
    """The sorted unique float64 values of a label list."""
    return np.unique(np.asarray(list(labels), dtype=np.float64))


def encode(volume: np.ndarray, values: np.ndarray) -> EncodedLabels:
    """Encode ``volume`` against the sorted unique ``values``."""
    volume = np.asarray(volume)
    if len(values) == 0:
        return EncodedLabels(values, np.zeros(volume.shape, dtype=np.int32))
    idx = np.searchsorted(values, volume)
    np.minimum(idx, len(values) - 1, out=idx)
    hit = values[idx] == volume
    codes = np.where(hit, idx + 1, 0).astype(np.int32)
    return EncodedLabels(values, codes)

