"""Intensity normalisation to [0, 1] with the scheme the planner chose from the fingerprint.

- ``fixed_range``: the dataset is already normalised to a known range (LUMIR: [0, 255]); every image
  maps with the same linear function, so intensities stay comparable across images. An image in other units
  (e.g. 0-4000, or [0, 1]) would be clipped to a white blob or squashed to black: such an image (see
  :func:`foreign_range`) is first mapped onto the training intensities by its own foreground percentiles
  (:func:`standardise`, a piecewise-linear histogram standardisation that also undoes most of a gamma change), with
  one warning line naming the file. Images in the training range keep exactly the training normalisation.
- ``percentile``: per image, clip to [lower, p99.5 of the foreground] and scale (lower = 0 for images
  with a zero background, else p0.5), robust to outliers and to scanner scaling.

The fixed_range scheme may carry ``reference_percentiles`` (the training fingerprint's pooled foreground
percentiles ``{"0.5": .., "50.0": .., "99.5": ..}``, added at inference by :func:`with_intensity_reference`); without
them the reference is the range itself (``[lower, upper]``). Foreground = non-zero voxels, as in the fingerprint.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from nnreg.utilities.intensity import piecewise_linear

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 50.0, 99.5)     # the fingerprint's foreground percentiles (nnreg.fingerprint.extract)
# "Far outside": the image's foreground p99.5 above OVER x upper (clipping would saturate its brightest tissue; the
# planner picks fixed_range only for data with max <= upper), or below UNDER x the reference p99.5 (the planner
# requires p99.5 >= upper / 4 for fixed_range, so a quarter of it is far darker than any training image), or
# values below lower by more than a quarter of the range (signed units).
OVER = 1.25
UNDER = 0.25


def foreground_percentiles(array: np.ndarray) -> np.ndarray | None:
    """The :data:`PERCENTILES` of the non-zero voxels (None when there are none)."""
    values = array[array != 0]
    return None if values.size == 0 else np.percentile(values, PERCENTILES)


def _reference(scheme: dict[str, Any]) -> np.ndarray | None:
    recorded = scheme.get("reference_percentiles")
    if not isinstance(recorded, dict):
        return None
    try:
        values = np.array([float(recorded[key]) for key in ("0.5", "50.0", "99.5")])
    except (KeyError, TypeError, ValueError):
        return None
    return values if np.all(np.diff(values) > 0) else None


def foreign_range(array: np.ndarray, scheme: dict[str, Any]) -> str | None:
    """Why ``array`` is far outside a fixed_range scheme's training intensities (None when it is not)."""
    lo, hi = float(scheme["lower"]), float(scheme["upper"])
    own = foreground_percentiles(array)
    if own is None:
        return None
    reference = _reference(scheme)
    reference_high = float(reference[2]) if reference is not None else hi
    if own[2] > OVER * hi:
        return f"its foreground's 99.5th percentile {own[2]:.4g} is above the model's range [{lo:g}, {hi:g}]"
    if own[2] < UNDER * reference_high:
        return (f"its foreground's 99.5th percentile {own[2]:.4g} is far below the training images' "
                f"{reference_high:.4g}")
    if float(array.min()) < lo - 0.25 * (hi - lo):
        return f"it has values down to {float(array.min()):.4g}, below the model's range [{lo:g}, {hi:g}]"
    return None


def standardise(array: np.ndarray, scheme: dict[str, Any]) -> np.ndarray:
    """``array`` mapped into a fixed_range scheme's units: its foreground percentiles onto the reference ones
    (piecewise linear, 0 stays 0 for a zero background, linear beyond the last percentile with the last slope)."""
    lo, hi = float(scheme["lower"]), float(scheme["upper"])
    own = foreground_percentiles(array)
    reference = _reference(scheme)
    if own is None:
        return array
    if reference is None or not np.all(np.diff(own) > 0):
        reference, own = np.array([lo, hi]), np.array([own[0] if array.min() < 0 else 0.0, own[2]])
    source, target = list(own), list(reference)
    if float(array.min()) >= 0 and source[0] > 0 and lo == 0.0:
        source, target = [0.0] + source, [0.0] + target
    source_a, target_a = np.asarray(source), np.asarray(target)
    if not (np.all(np.diff(source_a) > 0) and np.all(np.diff(target_a) >= 0)):
        return array
    return piecewise_linear(array, source_a, target_a).astype(np.float32)


def normalize(array: np.ndarray, scheme: dict[str, Any], name: str = "image") -> np.ndarray:
    """Apply a normalisation ``scheme`` to one image; returns float32 in [0, 1]. ``name`` (the file) is what a
    warning about a foreign intensity range names."""
    array = np.asarray(array, dtype=np.float32)
    scheme_name = scheme["scheme"]
    if scheme_name == "fixed_range":
        lo, hi = float(scheme["lower"]), float(scheme["upper"])
        reason = foreign_range(array, scheme)
        if reason is not None:
            logger.warning("warning: %s: intensities far outside the model's training range (%s): mapped onto the "
                           "training intensities by the image's own percentiles instead of clipping", name, reason)
            array = standardise(array, scheme)
    elif scheme_name == "percentile":
        fg = array[array != 0]
        if fg.size == 0:
            return np.zeros_like(array)
        hi = float(np.percentile(fg, scheme["upper_percentile"]))
        lo = 0.0 if array.min() >= 0 else float(np.percentile(fg, scheme["lower_percentile"]))
    else:
        raise ValueError(f"unknown normalisation scheme {scheme_name!r}")
    scale = 1.0 / max(hi - lo, 1e-8)
    out = (array - lo) * scale
    np.clip(out, 0.0, 1.0, out=out)
    return out


def with_intensity_reference(scheme: dict[str, Any], fingerprint: str | Path) -> dict[str, Any]:
    """A fixed_range ``scheme`` with the training fingerprint's foreground percentiles as its reference (for
    :func:`standardise`); the scheme unchanged when it is not fixed_range or the fingerprint is absent/unreadable."""
    path = Path(fingerprint)
    if scheme.get("scheme") != "fixed_range" or "reference_percentiles" in scheme or not path.is_file():
        return scheme
    try:
        percentiles = json.loads(path.read_text())["intensity"]["percentiles"]
        reference = {key: float(percentiles[key]) for key in ("0.5", "50.0", "99.5")}
    except (OSError, ValueError, KeyError, TypeError):
        logger.debug("%s: no usable intensity percentiles; the range itself is the intensity reference", path)
        return scheme
    return {**scheme, "reference_percentiles": reference}
