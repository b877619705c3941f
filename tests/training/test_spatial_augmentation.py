"""Spatial augmentation of training pairs: grid and dtype kept, per-image transforms independent, pair flips and
axis swaps identical for both images (the pair stays aligned), everything a function of the seed only."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from nnreg.training.data import augmentation
from nnreg.training.data.augmentation import SpatialAugmenter

SHAPE = (16, 20, 12)


def _images(shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)


def _only(monkeypatch: pytest.MonkeyPatch, **probabilities: float) -> None:
    """Set the augmentation probabilities (the rest 0) before an augmenter builds its transforms."""
    for name in ("P_ELASTIC", "P_ROTATION", "P_SCALE", "P_MIRROR", "P_TRANSPOSE"):
        monkeypatch.setattr(augmentation, name, probabilities.get(name, 0.0))


@pytest.mark.parametrize("shape", [SHAPE, (12, 12, 12), (16, 16, 8)])
def test_grid_dtype_and_range_are_kept(shape: tuple[int, ...]) -> None:
    fixed, moving = _images(shape)
    for seed in range(6):
        out_fixed, out_moving = SpatialAugmenter()(fixed, moving, seed)
        assert out_fixed.shape == out_moving.shape == shape
        assert out_fixed.dtype == out_moving.dtype == np.float32
        assert out_fixed.flags.c_contiguous and out_moving.flags.c_contiguous
        for out in (out_fixed, out_moving):       # linear interpolation with zero outside: no new extremes
            assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_depends_on_the_seed_only_and_leaves_global_generators_alone() -> None:
    fixed, moving = _images()
    augment = SpatialAugmenter()
    first = [augment(fixed, moving, seed) for seed in range(12)]
    np.random.seed(5)
    random.seed(5)
    state, python_state = np.random.get_state()[1].copy(), random.getstate()
    again = [SpatialAugmenter()(fixed, moving, seed) for seed in range(12)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert np.array_equal(np.random.get_state()[1], state) and random.getstate() == python_state
    changed = [not (np.array_equal(f, fixed) and np.array_equal(m, moving)) for f, m in first]
    assert any(changed) and not all(changed)   # augmented at these probabilities, but not every pair


def _flips_and_swaps(image: np.ndarray) -> list[np.ndarray]:
    """Every flip combination of every axis permutation that keeps the shape."""
    out = []
    for perm in itertools.permutations(range(3)):
        if tuple(image.shape[p] for p in perm) != image.shape:
            continue
        moved = np.transpose(image, perm)
        for flips in itertools.product((False, True), repeat=3):
            axes = tuple(a for a, f in enumerate(flips) if f)
            out.append(np.flip(moved, axes) if axes else moved)
    return out


@pytest.mark.parametrize("shape", [SHAPE, (12, 12, 12)])
def test_pair_flips_and_swaps_are_the_same_for_both_images(monkeypatch: pytest.MonkeyPatch,
                                                           shape: tuple[int, ...]) -> None:
    """Swapping the inputs swaps the outputs (one draw for the pair), and each output is a flip / axis swap of
    its input: the pair stays aligned, only its orientation changes."""
    _only(monkeypatch, P_MIRROR=1.0, P_TRANSPOSE=1.0)
    fixed, moving = _images(shape)
    seen = set()
    for seed in range(10):
        out_fixed, out_moving = SpatialAugmenter()(fixed, moving, seed)
        swapped_moving, swapped_fixed = SpatialAugmenter()(moving, fixed, seed)
        assert np.array_equal(out_fixed, swapped_fixed) and np.array_equal(out_moving, swapped_moving)
        candidates = _flips_and_swaps(fixed)
        index = next(i for i, c in enumerate(candidates) if np.array_equal(c, out_fixed))
        assert np.array_equal(_flips_and_swaps(moving)[index], out_moving)
        seen.add(index)
    assert len(seen) > 2


def test_an_aligned_pair_stays_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair related by a known shift keeps that relation, flipped with it: moving = fixed shifted by +2 voxels
    along axis 0, so after a flip of axis 0 the shift is -2."""
    _only(monkeypatch, P_MIRROR=1.0)
    base = np.zeros((20, 14, 12), np.float32)
    base[6:12, 4:9, 3:8] = 1.0
    shifted = np.roll(base, 2, axis=0)
    flipped_axis0 = set()
    for seed in range(8):
        out_fixed, out_moving = SpatialAugmenter()(base, shifted, seed)
        axes = next(a for r in range(4) for a in itertools.combinations(range(3), r)
                    if np.array_equal(np.flip(base, a) if a else base, out_fixed))
        direction = -2 if 0 in axes else 2
        assert np.array_equal(np.roll(out_fixed, direction, axis=0), out_moving), (seed, axes)
        flipped_axis0.add(0 in axes)
    assert flipped_axis0 == {True, False}


def test_each_image_gets_its_own_affine_and_elastic_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    _only(monkeypatch, P_ELASTIC=1.0, P_ROTATION=1.0, P_SCALE=1.0)
    blob = np.zeros(SHAPE, np.float32)
    blob[4:12, 5:15, 3:9] = 1.0
    out_fixed, out_moving = SpatialAugmenter()(blob, blob, 7)
    assert not np.allclose(out_fixed, blob) and not np.allclose(out_moving, blob)
    assert not np.allclose(out_fixed, out_moving)          # the same image, two independent draws
    # a small rotation / scaling / smooth deformation keeps most of the blob's mass where it was
    for out in (out_fixed, out_moving):
        assert abs(out.sum() - blob.sum()) < 0.35 * blob.sum()
        assert (out * blob).sum() > 0.5 * blob.sum()


def test_pair_dataset_applies_it_deterministically(tiny_preprocessed: dict[str, Path]) -> None:
    from tests.training.conftest import plain_and_augmented

    plain, spatial, shape = plain_and_augmented(tiny_preprocessed, spatial=True)
    differs = 0
    for index in range(6):
        a, b = spatial[index], spatial[index]
        assert a["fixed"].shape == (1, *shape) and a["fixed"].dtype == b["moving"].dtype
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in ("fixed", "moving"))
        differs += not np.array_equal(a["fixed"].numpy(), plain[index]["fixed"].numpy())
    assert differs > 0
