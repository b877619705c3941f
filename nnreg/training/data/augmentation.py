"""Intensity augmentation of one image (batchgenerators transforms), reproducible from a per-sample seed.

No spatial augmentation: registration pairs are already different anatomies, and a random spatial transform of
one image would only add a known affine the network must undo. batchgenerators draws from numpy's and Python's
global generators (the Gaussian noise variance comes from ``random.uniform``), so the transforms run with both
seeded from the sample's seed and restored afterwards: the result depends on the sample only, not on the process
that computes it (DataLoader workers reseed ``random`` per worker).
"""
from __future__ import annotations

import random

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform


def intensity_transforms() -> Compose:
    """nnU-Net-like intensity transforms for images normalised to [0, 1] (background stays 0 except noise)."""
    return Compose([
        GaussianNoiseTransform(noise_variance=(0.0, 0.001), p_per_sample=0.1),
        BrightnessMultiplicativeTransform(multiplier_range=(0.8, 1.2), p_per_sample=0.15),
        ContrastAugmentationTransform(contrast_range=(0.8, 1.2), preserve_range=True, p_per_sample=0.15),
        GammaTransform(gamma_range=(0.7, 1.5), invert_image=False, per_channel=True, retain_stats=False,
                       p_per_sample=0.3),
    ])


class IntensityAugmenter:
    """Applies :func:`intensity_transforms` to a single (H, W, D) image with an explicit seed."""

    def __init__(self) -> None:
        self.transforms = intensity_transforms()

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        saved_numpy, saved_python = np.random.get_state(), random.getstate()
        try:
            np.random.seed(seed % (2 ** 32))
            random.seed(seed)
            out = self.transforms(data=image[None, None].astype(np.float32, copy=True))["data"][0, 0]
        finally:
            np.random.set_state(saved_numpy)
            random.setstate(saved_python)
        return np.ascontiguousarray(out, dtype=np.float32)
