"""The example's synthetic subjects: diffeomorphic deformations and landmarks at their true positions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("nilearn")

from nnreg.dataset import load_dataset  # noqa: E402
from nnreg.dataset.image_io import read_image  # noqa: E402
from nnreg.example.subjects import _invert_points, random_deformation  # noqa: E402


def test_landmark_positions_solve_the_inverse_map() -> None:
    rng = np.random.default_rng(3)
    disp = random_deformation((24, 28, 20), rng, magnitude=4.0, smoothness=4.0)
    points = np.array([[12.0, 14.0, 10.0], [8.3, 20.1, 6.7], [15.5, 9.0, 13.2]])
    y = _invert_points(points, disp)
    u = np.stack([ndimage.map_coordinates(disp[a], y.T, order=1, mode="nearest") for a in range(3)], axis=1)
    np.testing.assert_allclose(y + u, points, atol=1e-3)       # subject position y maps to template point p
    assert np.abs(y - points).max() > 0.5                       # and the deformation actually moved them


def test_random_deformation_is_diffeomorphic() -> None:
    disp = random_deformation((24, 28, 20), np.random.default_rng(0), magnitude=6.0, smoothness=6.0)
    grads = [np.gradient(disp[a]) for a in range(3)]
    jac = np.stack([[grads[a][b] + (a == b) for b in range(3)] for a in range(3)])
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0


def test_builder_writes_a_learn2reg_dataset(tmp_path: Path) -> None:
    from nnreg.example.builder import BOX, build_example_dataset

    root = build_example_dataset(tmp_path / "Dataset999_MNIExample", n_train=2, n_val=2, seed=1)
    ds = load_dataset(root)
    assert len(ds.training) == 2 and len(ds.validation) == 2
    image, geometry = read_image(ds.training[0].path)
    assert image.shape == BOX and geometry.spacing == (2.0, 2.0, 2.0)
    assert 0 <= image.min() and image.max() <= 255 and (image > 0).mean() > 0.3
    labels, _ = read_image(ds.training[0].labels_path(), dtype=np.int32)
    assert set(np.unique(labels)) == set(range(9))                 # background + the 8 tissue labels
    landmarks, _ = read_image(ds.validation[0].fixed.landmarks_path(), dtype=np.int32)
    assert len(np.unique(landmarks)) - 1 == 15                      # 3 structure centroids + 12 random points
    assert json.loads((root / "dataset.json").read_text())["tensorImageShape"]["0"] == list(BOX)
