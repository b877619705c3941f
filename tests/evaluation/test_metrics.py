"""Each metric on small synthetic cases whose answers are derived by hand (docstrings give the derivation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

import nnreg.evaluation.surface as surface
from nnreg.evaluation import (dice, dice_per_label, evaluate_pair, hd95, hd95_per_label, jacobian_determinant,
                              ndv, non_positive_jacobians, sdlogj, tre, warp_nearest)
from nnreg.evaluation.jacobian import ndv_absolute, num_foldings_l2r
from nnreg.evaluation.surfels import neighbour_codes, surfel_area_table
from nnreg.evaluation.warp import nearest_indices, warp_with_indices
from tests.evaluation.conftest import SHAPE, label_map, landmark_map


def cube(shape: tuple[int, ...], start: tuple[int, ...], side: int) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float64)
    out[tuple(slice(s, s + side) for s in start)] = 1
    return out


# ---------------------------------------------------------------- NDV / Jacobians

def folded_field() -> np.ndarray:
    """The reference check case: grid 12x14x10, u[0, 5:7, 5:7, 4:6] = -2.5 (component 0 only)."""
    u = np.zeros((12, 14, 10, 3))
    u[5:7, 5:7, 4:6, 0] = -2.5
    return u


def test_ndv_reference_check_value() -> None:
    u = folded_field()
    assert ndv_absolute(u, np.ones((10, 12, 8), dtype=bool)) == pytest.approx(5.1667, abs=1e-4)
    assert ndv(u, np.ones((10, 12, 8))) == pytest.approx(0.5382, abs=1e-4)
    assert ndv(u) == pytest.approx(0.5382, abs=1e-4)  # no mask = all ones
    assert ndv(u, np.ones((12, 14, 10))) == pytest.approx(0.5382, abs=1e-4)  # full-size mask is cropped


def test_ndv_identity_and_smooth_fields_are_zero() -> None:
    assert ndv(np.zeros((8, 9, 10, 3))) == 0.0
    i = np.arange(8, dtype=float)[:, None, None]
    u = np.zeros((8, 9, 10, 3))
    u[..., 0] = 0.5 * i  # stretch along axis 0: every determinant 1.5 (one-sided) > 0
    assert ndv(u) == 0.0
    np.testing.assert_allclose(jacobian_determinant(u), 1.5)


def test_ndv_of_a_mirror_is_one_hundred_percent() -> None:
    """u_0 = -2i maps x to (-i, j, k): each one-sided J = -1 (8 of them) and each central J* = -2
    (edge vectors (1,-1,0), (1,0,-1), (0,-1,-1)), so per voxel 0.5 * (8 + 4) / 6 = 1 = the voxel itself."""
    u = np.zeros((6, 7, 8, 3))
    u[..., 0] = -2.0 * np.arange(6, dtype=float)[:, None, None]
    assert ndv(u) == pytest.approx(100.0)


def test_ndv_mask_restricts_and_empty_mask_is_nan() -> None:
    u = folded_field()
    far = np.zeros((12, 14, 10))
    far[:, :, 8:] = 1  # no folding near k >= 7
    assert ndv(u, far) == 0.0
    assert math.isnan(ndv(u, np.zeros((12, 14, 10))))


def test_sdlogj_and_non_positive_jacobians() -> None:
    """Central differences of the folded field: d u_0/d i = -1.25 at i = 4, 5 (j = 5, 6; k = 4, 5), so
    det = 1 - 1.25 < 0 at 2*2*2 = 8 voxels. The official num_foldings is counted after +3 and clipping: 0."""
    u = folded_field()
    assert non_positive_jacobians(u) == 8
    assert num_foldings_l2r(u) == 0.0
    assert sdlogj(np.zeros((8, 8, 8, 3))) == 0.0
    expected = np.log(np.clip(jacobian_determinant(u) + 3, 1e-9, 1e9)).std()
    assert sdlogj(u) == pytest.approx(expected)
    assert sdlogj(u, l2r_offset=False) > sdlogj(u)


# ---------------------------------------------------------------- warping

def test_index_warp_equals_map_coordinates() -> None:
    rng = np.random.default_rng(3)
    moving = rng.integers(0, 5, size=(9, 10, 11)).astype(float)
    u = rng.normal(scale=3.0, size=(9, 10, 11, 3))  # many samples fall outside the grid
    coords = np.meshgrid(*(np.arange(n) for n in moving.shape), indexing="ij") + u.transpose(3, 0, 1, 2)
    expected = map_coordinates(moving, coords, order=0)
    np.testing.assert_array_equal(warp_with_indices(moving, nearest_indices(u)), expected)
    np.testing.assert_array_equal(warp_nearest(moving, u), expected)


def test_pull_convention() -> None:
    """warped(x) = moving(x + u(x)): a blob at i = 6 with u_0 = +2 appears at i = 4."""
    moving = np.zeros((10, 5, 5))
    moving[6, 2, 2] = 1
    u = np.zeros((10, 5, 5, 3))
    u[..., 0] = 2
    assert np.argwhere(warp_nearest(moving, u) == 1).tolist() == [[4, 2, 2]]


# ---------------------------------------------------------------- Dice / HD95

@pytest.mark.parametrize("k", [1, 2, 3])
def test_translated_cube_dice_and_hd95(k: int) -> None:
    """A 6-voxel cube moved by k: Dice = (6-k)/6; every surfel is within k of the other surface and the
    face left behind (1/6 of the area > 5 %) is exactly k away, so HD95 = k."""
    fixed = cube((20, 20, 20), (5, 5, 5), 6)
    warped = cube((20, 20, 20), (5, 5 + k, 5), 6)
    assert dice(fixed, warped, [1]) == pytest.approx((6 - k) / 6)
    assert hd95(fixed, warped, [1]) == pytest.approx(k)
    assert surface.robust_hausdorff(fixed > 0, warped > 0) == pytest.approx(k)


def test_identical_labels_give_dice_one_hd95_zero() -> None:
    labels = label_map(0).astype(float)
    assert dice(labels, labels) == 1.0
    assert hd95(labels, labels) == 0.0


def test_nan_rules_and_vanished_label() -> None:
    """Label 7 is in neither map: NaN (skipped by nanmean). Label 2 exists in moving but is warped away:
    Dice 0 and HD95 inf, which makes the mean inf (official: no error)."""
    fixed = label_map(1).astype(float)
    moving = label_map(0).astype(float)
    warped = np.where(moving == 2, 0.0, moving)
    scores = dice_per_label(fixed, warped, [1, 2, 7], moving)
    assert scores[:2] == [1.0, 0.0] and math.isnan(scores[2])
    distances = hd95_per_label(fixed, warped, [1, 2, 7], moving)
    assert distances[0] == 0.0 and distances[1] == math.inf and math.isnan(distances[2])
    assert hd95(fixed, warped, [1, 2, 7], moving) == math.inf
    assert math.isnan(dice(fixed, warped, [7], moving))


def test_nan_rule_uses_the_unwarped_moving_map() -> None:
    fixed = label_map(1).astype(float)
    moving = np.where(label_map(0) == 2, 0, label_map(0)).astype(float)  # label 2 absent from moving
    assert math.isnan(dice_per_label(fixed, fixed, [2], moving)[0])  # even though "warped" has it


def test_tiny_pair_dice_by_hand() -> None:
    """Fixed = label_map(1), moving = label_map(0), zero field. Label 1 identical (1.0); the 4x4x4 cube of
    label 2 shifted by 1 (3/4); background: 1376 voxels each, 1680 - 240 - 80 = 1360 shared -> 1360/1376."""
    fixed, moving = label_map(1).astype(float), label_map(0).astype(float)
    scores = dice_per_label(fixed, moving, [0, 1, 2], moving)
    assert scores == pytest.approx([1360 / 1376, 1.0, 0.75])


@pytest.mark.parametrize("method", ["edt", "tree"])
def test_hd95_distance_paths_agree(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    from scipy.ndimage import gaussian_filter

    a = np.digitize(gaussian_filter(rng.random((18, 20, 16)), 2), [0.48, 0.52]).astype(float)
    b = np.digitize(gaussian_filter(rng.random((18, 20, 16)), 2), [0.48, 0.52]).astype(float)
    monkeypatch.setattr(surface, "DISTANCE_METHOD", "edt")
    reference = hd95_per_label(a, b, [0, 1, 2])
    monkeypatch.setattr(surface, "DISTANCE_METHOD", method)
    assert hd95_per_label(a, b, [0, 1, 2]) == reference


def test_surfel_table_geometry() -> None:
    table = surfel_area_table()
    assert table.shape == (256,)
    assert table[0] == 0.0 and table[255] == 0.0
    assert table[1] == pytest.approx(math.sqrt(3) / 8)  # one corner: triangle through 3 edge midpoints
    assert table[0b11110000] == pytest.approx(1.0)  # half the cube: a unit square
    np.testing.assert_array_equal(table, table[255 - np.arange(256)])  # inside/outside symmetric
    codes = neighbour_codes(np.ones((1, 1, 1), dtype=bool))
    assert codes.shape == (2, 2, 2) and sorted(codes.ravel().tolist()) == [1, 2, 4, 8, 16, 32, 64, 128]


def test_against_deepmind_surface_distance_when_installed() -> None:
    """Independent check: the reference package's table and HD95 (skipped when it is not installed)."""
    sd_tables = pytest.importorskip("surface_distance.lookup_tables")
    sd_metrics = pytest.importorskip("surface_distance.metrics")
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # the package predates numpy 2
    np.testing.assert_array_equal(sd_tables.create_table_neighbour_code_to_surface_area((1, 1, 1)),
                                  surfel_area_table())
    rng = np.random.default_rng(11)
    from scipy.ndimage import gaussian_filter

    for _ in range(5):
        a = gaussian_filter(rng.random((16, 18, 14)), 2) > 0.5
        b = gaussian_filter(rng.random((16, 18, 14)), 2) > 0.5
        ref = sd_metrics.compute_robust_hausdorff(sd_metrics.compute_surface_distances(a, b, np.ones(3)), 95.0)
        assert surface.robust_hausdorff(a, b) == ref


# ---------------------------------------------------------------- TRE

def test_tre_of_shifted_blob() -> None:
    """Blob 1 moved by one voxel, blob 2 in place: TRE = (1 + 0) / 2."""
    assert tre(landmark_map(1).astype(float), landmark_map(0).astype(float)) == pytest.approx(0.5)


def test_tre_after_a_field_that_realigns_the_blob() -> None:
    """u_0 = -1 for i <= 6 pulls moving blob 1 (centre i=4) to i=5, the fixed position; blob 2 (i=7..9) keeps u=0."""
    fixed, moving = landmark_map(1).astype(float), landmark_map(0).astype(float)
    u = np.zeros(SHAPE + (3,))
    u[:7, ..., 0] = -1
    assert tre(fixed, warp_nearest(moving, u)) == 0.0


def test_tre_vanished_blob_is_nan() -> None:
    fixed = landmark_map(0).astype(float)
    warped = np.where(fixed == 2, 0.0, fixed)
    assert math.isnan(tre(fixed, warped))


# ---------------------------------------------------------------- evaluate_pair

def test_evaluate_pair_all_metrics() -> None:
    fixed_labels, moving_labels = label_map(1).astype(float), label_map(0).astype(float)
    out = evaluate_pair(np.zeros(SHAPE + (3,)), fixed_labels, moving_labels, landmark_map(1), landmark_map(0),
                        moving_image=moving_labels, labels=[1, 2],
                        metrics=("dice", "hd95", "tre", "ndv", "sdlogj", "non_positive_jacobians"))
    assert out["dice"] == pytest.approx((1.0 + 0.75) / 2)
    assert out["hd95"] == pytest.approx(0.5)  # label 1: 0, label 2 (cube moved by 1): 1
    assert out["tre"] == pytest.approx(0.5)
    assert out["ndv"] == 0.0 and out["sdlogj"] == 0.0 and out["num_foldings"] == 0.0
    assert out["non_positive_jacobians"] == 0.0


def test_evaluate_pair_vanished_everything() -> None:
    """A field sampling far outside the grid: every warped voxel is background."""
    u = np.full(SHAPE + (3,), 100.0)
    out = evaluate_pair(u, label_map(1), label_map(0), landmark_map(1), landmark_map(0), labels=[0, 2],
                        metrics=("dice", "hd95", "tre"))
    assert out["dice"] == pytest.approx((2 * 1376 / (1376 + 1680) + 0.0) / 2)
    assert out["hd95"] == math.inf
    assert math.isnan(out["tre"])


def test_evaluate_pair_default_metrics_follow_the_inputs() -> None:
    out = evaluate_pair(np.zeros(SHAPE + (3,)), label_map(1), label_map(0))
    assert sorted(out) == ["dice", "hd95", "ndv"]
    assert sorted(evaluate_pair(np.zeros(SHAPE + (3,)))) == ["ndv"]


def test_evaluate_pair_missing_input_and_unknown_metric() -> None:
    with pytest.raises(ValueError, match="needs"):
        evaluate_pair(np.zeros(SHAPE + (3,)), metrics=("dice",))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_pair(np.zeros(SHAPE + (3,)), metrics=("jaccard",))
