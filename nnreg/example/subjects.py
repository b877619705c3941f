"""Synthetic "subjects" from the template: a random smooth diffeomorphic deformation plus intensity changes.

Conventions: arrays (i, j, k); displacements (3, H, W, D) in voxel units, pull: ``subject(y) =
template(y + u(y))``. Deformations are stationary velocity fields integrated by scaling and squaring, hence
diffeomorphic. A template landmark at p lies in the subject at the y solving ``y + u(y) = p`` (found by
fixed-point iteration), so every landmark's true position is known.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from nnreg.spatial import integrate_velocity


@dataclass
class Subject:
    image: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray   # label volume of radius-1 blobs, value k = landmark k


def random_deformation(shape: tuple[int, ...], rng: np.random.Generator, magnitude: float,
                       smoothness: float) -> np.ndarray:
    """A diffeomorphic (3, *shape) pull displacement from a smooth random velocity field."""
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), smoothness) for _ in range(3)])
    v *= magnitude / (np.abs(v).max() + 1e-8)
    with torch.no_grad():
        u = integrate_velocity(torch.from_numpy(v[None].astype(np.float32)), steps=7)
    return u[0].numpy()


def _sample(volume: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0)


def _invert_points(points: np.ndarray, disp: np.ndarray, iterations: int = 30) -> np.ndarray:
    """y with y + u(y) = p for each point p (fixed-point iteration on the smooth field)."""
    y = points.copy()
    for _ in range(iterations):
        u = np.stack([ndimage.map_coordinates(disp[a], y.T, order=1, mode="nearest") for a in range(3)], axis=1)
        y = points - u
    return y


def _blobs(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.int16)
    offsets = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    for k, p in enumerate(np.round(points).astype(int), start=1):
        for off in offsets:
            q = p + np.array(off)
            if all(0 <= q[a] < shape[a] for a in range(3)):
                out[tuple(q)] = k
    return out


def make_subject(t1: np.ndarray, labels: np.ndarray, points: np.ndarray, rng: np.random.Generator,
                 magnitude: float = 4.0) -> Subject:
    """Deform the template, then add a smooth bias field, a gamma change and noise."""
    shape = t1.shape
    disp = random_deformation(shape, rng, magnitude, smoothness=6.0)
    coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")) + disp
    image = _sample(t1, coords, 1)
    warped_labels = _sample(labels, coords, 0).astype(np.int16)
    log_bias = ndimage.gaussian_filter(rng.standard_normal(shape), 12)
    bias = np.exp(log_bias * (0.2 / (np.abs(log_bias).max() + 1e-8)))    # smooth, within about +-20 %
    gamma = rng.uniform(0.8, 1.25)
    image = 255.0 * (np.clip(image * bias, 0, None) / 255.0) ** gamma
    image = image + rng.normal(0, 3.0, shape)
    image[warped_labels == 0] = 0.0
    image = np.clip(image, 0, 255).astype(np.float32)
    return Subject(image, warped_labels, _blobs(_invert_points(points, disp), shape))
