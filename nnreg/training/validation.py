"""Per-epoch validation data: fixed pairs of the fold's held-out images on the preprocessed grid.

The images (and labels, when the dataset has them) are read once and kept in memory; each rank validates its
share of the pairs and the metrics are averaged over all pairs. Metric functions come from ``nnreg.evaluation``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnreg.preprocessing.storage import load_case
from nnreg.training.data.pairs import ordered_pairs


@dataclass
class ValidationCase:
    image: np.ndarray               # (H, W, D) float32 in [0, 1]
    seg: np.ndarray | None          # (H, W, D) int16 or None


class ValidationSet:
    """The epoch-validation pairs of one fold and their arrays."""

    def __init__(self, folder: Path, case_ids: list[str], max_pairs: int, seed: int = 0) -> None:
        self.pairs = ordered_pairs(case_ids, limit=max_pairs, seed=seed) if max_pairs > 0 else []
        needed = sorted({c for pair in self.pairs for c in pair})
        self.cases: dict[str, ValidationCase] = {}
        for case_id in needed:
            image, seg, _ = load_case(folder, case_id)
            self.cases[case_id] = ValidationCase(np.asarray(image[...], dtype=np.float32),
                                                 None if seg is None else np.asarray(seg[...]))
        self.has_labels = bool(self.cases) and all(c.seg is not None for c in self.cases.values())

    def share(self, rank: int, world_size: int) -> list[tuple[str, str]]:
        """The pairs rank ``rank`` validates."""
        return self.pairs[rank::world_size]


def mean_metrics(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of each metric over pairs, ignoring missing and NaN values (None if no finite value)."""
    keys = sorted({k for r in results for k in r})
    out: dict[str, float | None] = {}
    for key in keys:
        values = [float(r[key]) for r in results if r.get(key) is not None and math.isfinite(float(r[key]))]
        out[key] = float(np.mean(values)) if values else None
    return out
