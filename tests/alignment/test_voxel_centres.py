"""voxel_centres (computed by broadcasting) is the index -> physical matrix applied to every voxel index."""
from __future__ import annotations

import numpy as np

from nnreg.alignment.grids import index_to_physical, voxel_centres
from nnreg.dataset.image_io import Geometry


def test_voxel_centres_apply_the_index_to_physical_matrix() -> None:
    # anisotropic spacing, permuted and flipped axes, an oblique direction: every matrix entry is used
    angle = np.radians(20.0)
    oblique = np.array([[0, np.cos(angle), -np.sin(angle)], [-1, 0, 0], [0, np.sin(angle), np.cos(angle)]])
    geometry = Geometry((5, 7, 4), (1.5, 0.8, 2.0), (3.0, -4.0, 5.5), tuple(oblique.ravel()))
    matrix = index_to_physical(geometry)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).astype(float)
    expected = np.einsum("rc,ijkc->ijkr", matrix[:3, :3], index) + matrix[:3, 3]
    centres = voxel_centres(geometry)
    assert centres.shape == (5, 7, 4, 3) and centres.dtype == np.float64
    np.testing.assert_allclose(centres, expected, atol=1e-12)
