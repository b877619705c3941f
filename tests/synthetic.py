"""Tiny Learn2Reg datasets made on the fly: smooth "brains" (WM core, GM shell, ventricles, two deep
structures) deformed per subject by a random smooth field, with labels and landmark blobs.

Only for tests: shapes like 32x40x32 keep every test fast, and the anatomy is rich enough for Dice,
HD95 and TRE to move when registration works.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnreg.dataset.image_io import Geometry, write_image

LABELS = {"wm": 2, "gm": 3, "ventricle": 4, "left_deep": 10, "right_deep": 49}


def _template(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.85, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0))
    labels = np.zeros(shape, np.int16)
    labels[r < 1.0] = LABELS["gm"]
    labels[r < 0.75] = LABELS["wm"]
    vent = np.sqrt(((grid - np.array([0, 0.05, 0.1])[:, None, None, None]) / np.array([0.12, 0.3, 0.15])[:, None, None, None]) ** 2).sum(0)
    labels[vent < 1.0] = LABELS["ventricle"]
    for name, x in (("left_deep", -0.35), ("right_deep", 0.35)):
        d = np.sqrt((((grid - np.array([x, -0.1, -0.1])[:, None, None, None]) / 0.17) ** 2).sum(0))
        labels[d < 1.0] = LABELS[name]
    intensity = {0: 0.0, LABELS["gm"]: 150.0, LABELS["wm"]: 230.0, LABELS["ventricle"]: 40.0,
                 LABELS["left_deep"]: 185.0, LABELS["right_deep"]: 185.0}
    image = np.zeros(shape, np.float32)
    for lab, val in intensity.items():
        image[labels == lab] = val
    return image, labels


def random_smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float,
                        sigma: float) -> np.ndarray:
    """A smooth (3, *shape) voxel-unit displacement with max magnitude about ``amplitude``."""
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)])
    return (field / (np.abs(field).max() + 1e-8) * amplitude).astype(np.float32)


def _warp(volume: np.ndarray, field: np.ndarray, order: int) -> np.ndarray:
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")) + field
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant")


def _landmarks(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, np.int16)
    for k, lab in enumerate((LABELS["left_deep"], LABELS["right_deep"], LABELS["ventricle"]), start=1):
        if (labels == lab).any():
            c = np.round(ndimage.center_of_mass(labels == lab)).astype(int)
            for dx in ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                out[tuple(c + np.array(dx))] = k
    return out


def make_subject(shape: tuple[int, int, int], seed: int, amplitude: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 255], labels) of one synthetic subject."""
    rng = np.random.default_rng(seed)
    image, labels = _template(shape)
    field = random_smooth_field(shape, rng, amplitude, sigma=max(shape) / 6)
    warped = _warp(image, field, 1)
    warped = warped * rng.uniform(0.9, 1.05) + ndimage.gaussian_filter(rng.standard_normal(shape), 1) * 4
    warped[_warp(labels, field, 0) == 0] = 0
    return np.clip(warped, 0, 255).astype(np.float32), _warp(labels, field, 0).astype(np.int16)


def make_learn2reg_dataset(root: Path, shape: tuple[int, int, int] = (32, 40, 32), n_train: int = 6,
                           n_val: int = 3, spacing: float = 1.0, labels: bool = True, prefix: str = "TINY",
                           seed: int = 0) -> Path:
    """Write a Learn2Reg-layout dataset (imagesTr, imagesVal, labels*, landmarksVal, dataset.json)."""
    root = Path(root)
    geometry = Geometry(shape, (spacing,) * 3, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    training, val_images = [], []
    for i in range(n_train + n_val):
        split = "Tr" if i < n_train else "Val"
        name = f"{prefix}_{i:04d}_0000.nii.gz"
        image, lab = make_subject(shape, seed * 1000 + i)
        write_image(image, geometry, root / f"images{split}" / name)
        if labels:
            write_image(lab, geometry, root / f"labels{split}" / name)
        if split == "Val":
            write_image(_landmarks(lab), geometry, root / "landmarksVal" / name)
            val_images.append(f"./imagesVal/{name}")
        else:
            training.append({"image": f"./imagesTr/{name}"})
    pairs = [{"fixed": f, "moving": m} for f in val_images for m in val_images if f != m]
    meta = {"name": root.name, "pairings": "unpaired", "provided_data": {"0": ["image"]},
            "modality": {"0": "T1w"}, "labels": {}, "tensorImageSize": {"0": "3D"},
            "tensorImageShape": {"0": list(shape)}, "numTraining": n_train, "training": training,
            "numValidation": len(pairs), "validation": pairs}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
