"""GridMapping against an independent reference (scipy map_coordinates on explicit coordinates)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnreg.preprocessing.grid import GridMapping


def _smooth(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 2).astype(np.float32)


def test_pure_crop_and_pad_is_slicing() -> None:
    a = _smooth((10, 12, 8))
    m = GridMapping((10, 12, 8), (1.0, 1.0, 1.0), (-2, 3, 0), (16, 8, 8))
    out = m.to_network(a, order=1)
    assert out.shape == (16, 8, 8)
    np.testing.assert_array_equal(out[2:12], a[:, 3:11, :])
    assert (out[:2] == 0).all() and (out[12:] == 0).all()


def test_half_resolution_is_block_average() -> None:
    a = _smooth((8, 10, 6))
    m = GridMapping((8, 10, 6), (2.0, 2.0, 2.0), (0, 0, 0), (4, 5, 3))
    blocks = a.reshape(4, 2, 5, 2, 3, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(m.to_network(a, order=1), blocks, atol=1e-5)


def test_field_back_to_original_matches_reference_and_rescales_vectors() -> None:
    shape_net = (6, 8, 5)
    field = np.stack([_smooth(shape_net, s) for s in range(3)])
    m = GridMapping((12, 15, 10), (2.0, 2.0, 2.0), (0, 0, 0), shape_net)
    out = m.field_to_original(field)
    assert out.shape == (12, 15, 10, 3)
    # independent reference: network coordinate of original voxel x is (x + 0.5) / 2 - 0.5
    x = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / 2 - 0.5 for n in (12, 15, 10)], indexing="ij"))
    for a in range(3):
        ref = ndimage.map_coordinates(field[a], x, order=1, mode="nearest") * 2.0
        np.testing.assert_allclose(out[..., a], ref, atol=1e-5)


def test_constant_field_survives_crop_and_is_extended_by_edge_values() -> None:
    field = np.ones((3, 4, 4, 4), np.float32) * np.array([1.0, -2.0, 0.5], np.float32)[:, None, None, None]
    m = GridMapping((6, 6, 6), (1.0, 1.0, 1.0), (1, 1, 1), (4, 4, 4))
    out = m.field_to_original(field)
    np.testing.assert_allclose(out[..., 1], -2.0)


def test_labels_use_nearest_neighbour_and_keep_label_values() -> None:
    labels = np.zeros((8, 8, 8), np.int16)
    labels[2:6, 2:6, 2:6] = 7
    m = GridMapping((8, 8, 8), (2.0, 2.0, 2.0), (0, 0, 0), (4, 4, 4))
    out = m.to_network(labels, order=0)
    assert set(np.unique(out)) == {0, 7}
