"""Read every training image once and record what the planner needs.

Per image: shape, spacing, origin, direction and orientation code, foreground bounding box (voxel indices,
half-open, array-axis order (i, j, k)), foreground intensity statistics (percentiles 0.5/50/99.5, mean, std,
min, max). The foreground is the nonzero region, since Learn2Reg brain images are skull-stripped with a
zero background. Dataset level: median spacing and shape, the union foreground box, pooled intensity
percentiles, and whether all images share one grid. Reading an image here is also where its contents are
checked (3D, finite, not all zero).

Memory is bounded whatever the number of images: each worker reads one image at a time and returns its summary
plus a random sample of ``samples_per_image(n) = min(100,000, 2,000,000 // n)`` (at least 1) foreground values,
so the parent holds at most :data:`POOLED_SAMPLES` = 2,000,000 float32 samples (8 MB) for the pooled percentiles,
plus about 1 KB of summary per image (the ``cases`` entries that the fingerprint file keeps). The pooled mean and
standard deviation are exact (from each image's voxel count, mean and standard deviation), not sampled.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnreg.dataset.image_io import read_image
from nnreg.dataset.learn2reg import Learn2RegDataset
from nnreg.utilities.errors import DatasetError
from nnreg.utilities.parallel import map_with_progress

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 50.0, 99.5)
POOLED_SAMPLES = 2_000_000      # foreground values kept in the parent for the pooled percentiles, in total
MAX_SAMPLES_PER_IMAGE = 100_000


def samples_per_image(num_images: int) -> int:
    """Foreground values each image contributes to the pooled percentiles: the total stays <= POOLED_SAMPLES."""
    return max(1, min(MAX_SAMPLES_PER_IMAGE, POOLED_SAMPLES // max(1, num_images)))


def foreground_bbox(mask: np.ndarray) -> list[list[int]]:
    """Half-open ``[[lo, hi], ...]`` box of the True voxels of ``mask`` per array axis."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def fingerprint_image(path: str, num_samples: int = MAX_SAMPLES_PER_IMAGE) -> dict[str, Any]:
    """Fingerprint one image; raise :class:`DatasetError` naming it if it is NaN, infinite or all zero.

    ``_sample`` holds at most ``num_samples`` random foreground values, ``_count`` the number of foreground voxels
    (both for the dataset-level summary, removed before the fingerprint is written)."""
    array, geometry = read_image(path)
    if not np.isfinite(array).all():
        raise DatasetError("image contains NaN or infinite values", path)
    foreground = array != 0
    if not foreground.any():
        raise DatasetError("image is all zero", path)
    values = array[foreground]
    rng = np.random.default_rng(0)
    sample = values if values.size <= num_samples else rng.choice(values, num_samples, replace=False)
    pct = np.percentile(values, PERCENTILES)
    direction = geometry.direction
    return {
        "shape": list(geometry.shape),
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "direction": list(direction),
        "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction),
        "foreground_bbox": foreground_bbox(foreground),
        "foreground_fraction": float(foreground.mean()),
        "intensity": {
            "percentiles": {str(p): float(v) for p, v in zip(PERCENTILES, pct)},
            "mean": float(values.mean(dtype=np.float64)),
            "std": float(values.std(dtype=np.float64)),
            "min": float(array.min()),
            "max": float(array.max()),
        },
        "_sample": sample.astype(np.float32),
        "_count": int(values.size),
    }


def _pooled_mean_std(counts: np.ndarray, means: np.ndarray, stds: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of all foreground voxels of all images, from per-image values."""
    total = counts.sum()
    mean = float((counts * means).sum() / total)
    second = float((counts * (stds ** 2 + means ** 2)).sum() / total)
    return mean, float(np.sqrt(max(second - mean ** 2, 0.0)))


def extract_fingerprint(dataset: Learn2RegDataset, num_processes: int = 2) -> dict[str, Any]:
    """Fingerprint every training image of ``dataset`` and summarise at dataset level."""
    entries = dataset.training
    results = map_with_progress(partial(fingerprint_image, num_samples=samples_per_image(len(entries))),
                                [str(e.path) for e in entries], num_processes, desc="fingerprint",
                                label=lambda path: f"image {path}")
    cases: dict[str, Any] = {}
    samples, counts = [], []
    for entry, result in zip(entries, results):
        samples.append(result.pop("_sample"))
        counts.append(result.pop("_count"))
        cases[entry.case_id] = result
    if dataset.tensor_shape is not None:
        for entry in entries:
            shape = tuple(cases[entry.case_id]["shape"])
            if shape != tuple(dataset.tensor_shape):
                raise DatasetError(
                    f"has shape {list(shape)} but dataset.json's tensorImageShape says {list(dataset.tensor_shape)}",
                    entry.path)
    shapes = np.array([c["shape"] for c in cases.values()])
    spacings = np.array([c["spacing"] for c in cases.values()])
    same_grid = bool((shapes == shapes[0]).all() and np.allclose(spacings, spacings[0]))
    boxes = np.array([c["foreground_bbox"] for c in cases.values()])
    pooled = np.concatenate(samples)
    del samples
    mean, std = _pooled_mean_std(np.array(counts, dtype=np.float64),
                                 np.array([c["intensity"]["mean"] for c in cases.values()]),
                                 np.array([c["intensity"]["std"] for c in cases.values()]))
    return {
        "dataset_name": dataset.name,
        "num_images": len(cases),
        "median_spacing": [float(x) for x in np.median(spacings, axis=0)],
        "median_shape": [float(x) for x in np.median(shapes, axis=0)],
        "same_grid": same_grid,
        "union_foreground_bbox": [[int(boxes[:, a, 0].min()), int(boxes[:, a, 1].max())] for a in range(3)],
        "intensity": {
            "percentiles": {str(p): float(v) for p, v in zip(PERCENTILES, np.percentile(pooled, PERCENTILES))},
            "mean": mean,
            "std": std,
            "min": float(min(c["intensity"]["min"] for c in cases.values())),
            "max": float(max(c["intensity"]["max"] for c in cases.values())),
        },
        "cases": cases,
    }
