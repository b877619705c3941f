"""Intensity normalisation to [0, 1] with the scheme the planner chose from the fingerprint.

- ``fixed_range``: the dataset is already normalised to a known range (LUMIR: [0, 255]); every image
  maps with the same linear function, so intensities stay comparable across images.
- ``percentile``: per image, clip to [lower, p99.5 of the foreground] and scale (lower = 0 for images
  with a zero background, else p0.5), robust to outliers and to scanner scaling.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def normalize(array: np.ndarray, scheme: dict[str, Any]) -> np.ndarray:
    """Apply a normalisation ``scheme`` to one image; returns float32 in [0, 1]."""
    array = np.asarray(array, dtype=np.float32)
    name = scheme["scheme"]
    if name == "fixed_range":
        lo, hi = float(scheme["lower"]), float(scheme["upper"])
    elif name == "percentile":
        fg = array[array != 0]
        if fg.size == 0:
            return np.zeros_like(array)
        hi = float(np.percentile(fg, scheme["upper_percentile"]))
        lo = 0.0 if array.min() >= 0 else float(np.percentile(fg, scheme["lower_percentile"]))
    else:
        raise ValueError(f"unknown normalisation scheme {name!r}")
    scale = 1.0 / max(hi - lo, 1e-8)
    out = (array - lo) * scale
    np.clip(out, 0.0, 1.0, out=out)
    return out
