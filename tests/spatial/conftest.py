"""Shared fixtures for the spatial tests: random smooth fields on small grids."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage


def smooth_random(shape: tuple[int, ...], sigma: float, amplitude: float, seed: int) -> np.ndarray:
    """Gaussian-smoothed noise scaled to a maximum absolute value of ``amplitude`` (float64)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return field * (amplitude / np.abs(field).max())


def smooth_field(shape: tuple[int, int, int], amplitude: float, seed: int, sigma: float = 3.0) -> np.ndarray:
    """A smooth random displacement field (3, H, W, D)."""
    return np.stack([smooth_random(shape, sigma, amplitude, seed + c) for c in range(3)])


@pytest.fixture
def shape() -> tuple[int, int, int]:
    return (17, 20, 15)


def to_torch(array: np.ndarray) -> torch.Tensor:
    """Add a batch axis and convert to float64 (references are computed in float64)."""
    return torch.from_numpy(np.ascontiguousarray(array))[None].to(torch.float64)
