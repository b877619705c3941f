"""The grid mapping's crop/pad (acvl-utils' ``crop_and_pad_nd``) against an index-by-index reference."""
from __future__ import annotations

import numpy as np
import pytest

from nnreg.preprocessing.grid import _crop_or_pad


def _reference(array: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...], mode: str) -> np.ndarray:
    """out[p] = array[p + start] inside, else 0 (constant) or the nearest edge value (edge)."""
    index = np.meshgrid(*[np.arange(n) + s for n, s in zip(shape, start)], indexing="ij")
    inside = np.all([(i >= 0) & (i < n) for i, n in zip(index, array.shape)], axis=0)
    clipped = tuple(np.clip(i, 0, n - 1) for i, n in zip(index, array.shape))
    out = array[clipped]
    return out if mode == "edge" else np.where(inside, out, 0).astype(array.dtype)


@pytest.mark.parametrize("mode", ["constant", "edge"])
@pytest.mark.parametrize("start, shape", [((0, 0, 0), (6, 7, 5)), ((-2, 1, -3), (8, 4, 9)), ((2, -1, 1), (3, 9, 2)),
                                          ((1, 2, 0), (4, 3, 5))])
def test_crop_or_pad_matches_the_reference(mode: str, start: tuple[int, ...], shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).standard_normal((6, 7, 5)).astype(np.float32)
    out = _crop_or_pad(array, start, shape, mode)
    assert out.shape == shape and out.dtype == array.dtype and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, _reference(array, start, shape, mode))
