"""``sample_field_at`` and ``sample_at_indices`` (every output field, warped image and QC plane of ``nnreg_register``
goes through them) against ``scipy.ndimage.map_coordinates``, with enough points that the threaded ``grid_sample``
splits the call, and bitwise equal to one unsplit ``F.grid_sample`` call."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import nnreg.alignment.sampling as point_sampling
import nnreg.spatial.sampling as sampling
from nnreg.dataset.image_io import Geometry


GEOMETRY = Geometry((9, 11, 8), (1.5, 1.0, 2.0), (10.0, -4.0, 3.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))


def _points(n: int, seed: int) -> np.ndarray:
    """Voxel indices ``(n, 3)`` from 2 voxels before the grid to 2 after it (edge values / zeros outside)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 1.0, (n, 3)) + rng.uniform(0, 1, (n, 3)) * (np.asarray(GEOMETRY.shape) + 1)


def test_field_at_physical_points_matches_map_coordinates(two_threads, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    field = rng.normal(size=(1, 3, *GEOMETRY.shape))
    index = _points(6000, 1)
    from nnreg.alignment.grids import index_to_physical

    matrix = index_to_physical(GEOMETRY)
    physical = index @ matrix[:3, :3].T + matrix[:3, 3]
    split = []
    threaded = point_sampling.grid_sample
    monkeypatch.setattr(point_sampling, "grid_sample",
                        lambda im, g, mode, padding_mode: split.append(sampling._slabs(im, g)) or threaded(
                            im, g, mode, padding_mode))
    got = point_sampling.sample_field_at(torch.from_numpy(field), GEOMETRY, torch.from_numpy(physical)).numpy()
    assert split == [2]                                   # the threaded sampler, split over both threads
    expected = np.stack([ndimage.map_coordinates(field[0, c], index.T, order=1, mode="nearest")
                         for c in range(3)], axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    unsplit = point_sampling.sample_field_at  # the same call through one F.grid_sample: bitwise equal
    monkeypatch.setattr(point_sampling, "grid_sample",
                        lambda im, g, mode, padding_mode: F.grid_sample(im, g, mode=mode, padding_mode=padding_mode,
                                                                        align_corners=True))
    assert np.array_equal(unsplit(torch.from_numpy(field), GEOMETRY, torch.from_numpy(physical)).numpy(), got)


@pytest.mark.parametrize("mode,order", [("bilinear", 1), ("nearest", 0)])
def test_image_at_indices_matches_map_coordinates(two_threads, mode, order) -> None:
    rng = np.random.default_rng(2)
    image = rng.uniform(size=GEOMETRY.shape).astype(np.float32)
    index = _points(5000, 3)
    if order == 0:                    # away from ties, where rounding conventions differ
        index = np.floor(index) + rng.uniform(0.1, 0.4, index.shape)
    got = point_sampling.sample_at_indices(torch.from_numpy(image)[None, None], torch.from_numpy(index),
                                           mode).numpy()
    expected = ndimage.map_coordinates(image.astype(np.float64), index.T, order=order, mode="constant", cval=0.0)
    inside = np.all((index >= 0) & (index <= np.asarray(GEOMETRY.shape) - 1), axis=1)
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-5)
    outside = np.any((index <= -1) | (index >= np.asarray(GEOMETRY.shape)), axis=1)   # all 8 corners outside
    assert outside.sum() > 100 and np.all(got[outside] == 0)
