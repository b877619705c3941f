"""Augmentation of training pairs (batchgenerators transforms), reproducible from a per-sample seed.

Two kinds, applied in the data workers (spatial first, then intensity, as nnU-Net does):

* **Spatial** (:class:`SpatialAugmenter`, hyperparameter ``spatial_augmentation``). Each image of a pair gets
  its *own* random affine (rotation ±:data:`ROTATION_DEGREES` about each axis, isotropic scaling in
  :data:`SCALE`) and elastic deformation (batchgenerators' ``SpatialTransform``: a smoothed random displacement,
  magnitude ``alpha``, smoothness ``sigma`` in voxels), each with its own probability: a new, still plausible,
  pair of anatomies the network must register — more variety than the ``n (n - 1)`` ordered pairs of a small
  training set. Then the *pair* is flipped along each array axis and its equal-length axes swapped with the same
  draw for both images (``MirrorTransform`` / ``TransposeAxesTransform`` on the two images stacked as channels),
  so the pair stays a registration problem of the same kind: what the fixed image's voxel ``x`` should pull from
  the moving image is moved along with it. The output grid is the input's (array axis order, voxels; linear
  interpolation, zero outside the image, the background of the [0, 1]-normalised images).
* **Intensity** (:class:`IntensityAugmenter`, hyperparameter ``augmentation``): noise, brightness, contrast,
  gamma, per image.
* **Contrast** (:class:`ContrastRandomizer`, hyperparameter ``contrast_augmentation``, off by default): with
  probability :data:`P_CONTRAST` per image, a new random contrast — a random piecewise-linear intensity curve
  (monotonic or not, background kept at 0), then a smooth bias field, a gamma change, Gaussian blur and noise, the
  result rescaled to [0, 1] — so that the network sees the same anatomy in contrasts it was never given
  (T2-like, FLAIR-like or none real), as contrast-agnostic training does. Each image of a pair draws its own
  contrast; the two stay a registration problem because the geometry is untouched.

batchgenerators draws from numpy's and Python's global generators (the Gaussian noise variance comes from
``random.uniform``), so every transform runs with both seeded from the sample's seed and restored afterwards:
the result depends on the sample only, not on the process that computes it (DataLoader workers reseed
``random`` per worker).
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Iterator

import numpy as np
from scipy import ndimage
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform, TransposeAxesTransform

from nnreg.utilities.intensity import bias_field, random_curve

ROTATION_DEGREES = 10.0         # per axis, each image independently
SCALE = (0.9, 1.1)              # isotropic
ELASTIC_ALPHA = (0.0, 300.0)    # batchgenerators' magnitude (with sigma 9-13 voxels: up to ~1 voxel RMS)
ELASTIC_SIGMA = (9.0, 13.0)     # smoothness of the elastic displacement, voxels
P_ELASTIC, P_ROTATION, P_SCALE = 0.2, 0.2, 0.2     # per image (nnU-Net's rotation/scaling probabilities)
P_MIRROR = 0.5                  # per pair; then each axis flipped with probability 1/2 (the same for both images)
P_TRANSPOSE = 0.5               # per pair, among axes of equal length only (a shape never changes)
P_CONTRAST = 0.5                # per image: a random new contrast (otherwise the image's own)
CONTRAST_POINTS = 5             # control points of the random intensity curve on [0, 1]
CONTRAST_BIAS = 0.3             # bias field amplitude at most
CONTRAST_GAMMA = 0.4            # gamma = exp(U(-this, this))
CONTRAST_BLUR = 1.0             # Gaussian blur sigma at most (voxels)
CONTRAST_NOISE = 0.03           # noise standard deviation at most ([0, 1] intensities)


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """numpy's and Python's global generators seeded with ``seed`` inside, restored afterwards."""
    saved_numpy, saved_python = np.random.get_state(), random.getstate()
    try:
        np.random.seed(seed % (2 ** 32))
        random.seed(seed)
        yield
    finally:
        np.random.set_state(saved_numpy)
        random.setstate(saved_python)


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
        with seeded_global_rngs(seed):
            out = self.transforms(data=image[None, None].astype(np.float32, copy=True))["data"][0, 0]
        return np.ascontiguousarray(out, dtype=np.float32)


class ContrastRandomizer:
    """A random new contrast for a single (H, W, D) image in [0, 1] from an explicit seed (module docstring)."""

    def __init__(self, probability: float = P_CONTRAST) -> None:
        self.probability = probability

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if rng.random() >= self.probability:
            return image
        brain = image > 0
        out = random_curve(np.clip(image, 0.0, 1.0), rng, CONTRAST_POINTS)
        out = out * bias_field(image.shape, rng.uniform(0.0, CONTRAST_BIAS), rng)
        out = np.clip(out, 0.0, None) ** math.exp(rng.uniform(-CONTRAST_GAMMA, CONTRAST_GAMMA))
        out = ndimage.gaussian_filter(out, rng.uniform(0.0, CONTRAST_BLUR))
        out = out + rng.normal(0.0, rng.uniform(0.0, CONTRAST_NOISE), out.shape)
        out = np.where(brain, out, 0.0)
        top = float(np.percentile(out[brain], 99.5)) if brain.any() else 1.0
        return np.ascontiguousarray(np.clip(out / max(top, 1e-6), 0.0, 1.0), dtype=np.float32)


def image_spatial_transform(shape: tuple[int, ...]) -> SpatialTransform:
    """Random rotation, scaling and elastic deformation of one image, on its own grid (module docstring)."""
    angle = (-math.radians(ROTATION_DEGREES), math.radians(ROTATION_DEGREES))
    return SpatialTransform(tuple(shape), patch_center_dist_from_border=[n // 2 for n in shape],
                            do_elastic_deform=True, alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA,
                            do_rotation=True, angle_x=angle, angle_y=angle, angle_z=angle, do_scale=True, scale=SCALE,
                            border_mode_data="constant", border_cval_data=0.0, order_data=1, random_crop=False,
                            p_el_per_sample=P_ELASTIC, p_scale_per_sample=P_SCALE, p_rot_per_sample=P_ROTATION)


def pair_spatial_transforms(shape: tuple[int, ...]) -> Compose:
    """Flips and (equal-length) axis swaps drawn once per pair: applied to the two images stacked as channels."""
    transforms = [MirrorTransform(axes=(0, 1, 2), p_per_sample=P_MIRROR)]
    equal = next((axes for axes in ((0, 1, 2), (0, 1), (0, 2), (1, 2)) if len({shape[a] for a in axes}) == 1), None)
    if equal is not None:
        transforms.append(TransposeAxesTransform(transpose_any_of_these=equal, p_per_sample=P_TRANSPOSE))
    return Compose(transforms)


class SpatialAugmenter:
    """Spatial augmentation of a (fixed, moving) pair of (H, W, D) images from one seed (module docstring)."""

    def __init__(self) -> None:
        self._transforms: dict[tuple[int, ...], tuple[SpatialTransform, Compose]] = {}

    def __call__(self, fixed: np.ndarray, moving: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if fixed.shape != moving.shape:
            raise ValueError(f"a pair must share one grid, got {fixed.shape} and {moving.shape}")
        shape = tuple(fixed.shape)
        if shape not in self._transforms:
            self._transforms[shape] = (image_spatial_transform(shape), pair_spatial_transforms(shape))
        per_image, per_pair = self._transforms[shape]
        images = []
        for offset, image in enumerate((fixed, moving)):
            with seeded_global_rngs(seed + offset):
                images.append(per_image(data=image[None, None].astype(np.float32, copy=True))["data"][0, 0])
        with seeded_global_rngs(seed + 2):
            pair = per_pair(data=np.stack(images)[None])["data"][0]
        return (np.ascontiguousarray(pair[0], dtype=np.float32), np.ascontiguousarray(pair[1], dtype=np.float32))
