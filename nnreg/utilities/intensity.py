"""Random intensity effects shared by the synthetic-contrast generator (:mod:`nnreg.example.contrast`) and the
contrast augmentation of training (:mod:`nnreg.training.data.augmentation`): a smooth multiplicative bias field and
a random piecewise-linear intensity curve, and the piecewise-linear map (extrapolated linearly) that intensity
standardisation and the contrast generator share. Arrays in array-axis order; coordinates are normalised to [-1, 1] per
axis, so a field does not depend on the voxel size.
"""
from __future__ import annotations

import numpy as np


def bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth field in [1 - amplitude, 1 + amplitude]: a random second-order polynomial of the coordinates."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    terms = list(axes) + [a * b for i, a in enumerate(axes) for b in axes[i:]]
    field = sum(rng.uniform(-1, 1) * t for t in terms)
    field = field / max(float(np.abs(field).max()), 1e-12)
    return 1.0 + amplitude * field


def random_curve(values: np.ndarray, rng: np.random.Generator, points: int = 5,
                 low: float = 0.05) -> np.ndarray:
    """``values`` in [0, 1] through a random piecewise-linear curve with ``points`` control points on [0, 1]:
    0 maps to 0 (the background stays background), the others to uniform draws in [low, 1] — monotonic or not."""
    x = np.linspace(0.0, 1.0, points)
    y = np.concatenate([[0.0], rng.uniform(low, 1.0, points - 1)])
    return np.interp(values, x, y)


def piecewise_linear(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``values`` mapped through the points ``source -> target`` (``source`` increasing): linear between them and,
    beyond the first and the last, along the first and the last segment."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    out = np.interp(values, source, target)
    slopes = np.diff(target) / np.diff(source)
    above, below = values > source[-1], values < source[0]
    out[above] = target[-1] + (values[above] - source[-1]) * slopes[-1]
    out[below] = target[0] + (values[below] - source[0]) * slopes[0]
    return out
