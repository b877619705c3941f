"""benchmarks/register_masks.py: the cavity empties only brain voxels within its radius around a cortex voxel, the
deviation is the mean distance in mm over the voxels mapped into the shell around the centre, and one tiny run writes its three rows
(the intact row is its own reference), the cavity image and the mask."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnreg.dataset.image_io import read_image
from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset

masks = load_benchmark("register_masks")


def test_the_cavity_is_a_sphere_of_brain_around_a_cortex_voxel() -> None:
    image = np.zeros((20, 20, 20), np.float32)
    image[2:18, 2:18, 2:18] = 100.0
    labels = np.zeros((20, 20, 20), np.int16)
    labels[10, 10, 3] = 42                              # the one cortex voxel
    emptied, hole, centre = masks.cavity(image, labels, (2.0, 1.0, 1.0), 4.0, np.random.default_rng(0))
    assert tuple(centre) == (10, 10, 3)
    grid = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"), -1)
    inside = np.sqrt((((grid - centre) * [2.0, 1.0, 1.0]) ** 2).sum(-1)) <= 4.0
    assert np.array_equal(hole, inside & (image > 0)) and not hole[:, :, :2].any()
    assert (emptied[hole] == 0).all() and np.array_equal(emptied[~hole], image[~hole])
    with pytest.raises(ValueError, match="cortex"):
        masks.cavity(image, np.zeros_like(labels), (1.0,) * 3, 4.0, np.random.default_rng(0))


def test_deviation_is_the_mean_distance_in_mm_near_the_centre() -> None:
    reference = np.zeros((10, 10, 10, 3))
    shifted = reference.copy()
    shifted[..., 0] = 0.5                               # half a voxel along axis 0 of 2 mm voxels: 1 mm
    centre = np.array([5.0, 5.0, 5.0])
    assert masks.deviation(reference, reference, centre, (2.0, 1.0, 1.0), 1.0, 3.0) == 0.0
    assert masks.deviation(shifted, reference, centre, (2.0, 1.0, 1.0), 1.0, 3.0) == pytest.approx(1.0)
    inside_only = reference.copy()
    inside_only[5, 5, 5] = 9.0                          # the centre itself: inside the cavity, not in the shell
    assert masks.deviation(inside_only, reference, centre, (1.0,) * 3, 1.0, 3.0) == 0.0
    far = np.array([100.0, 100.0, 100.0])
    assert np.isnan(masks.deviation(shifted, reference, far, (1.0,) * 3, 1.0, 3.0))


def test_a_tiny_run_writes_three_rows(tmp_path: Path) -> None:
    dataset = make_learn2reg_dataset(tmp_path / "data", shape=(24, 28, 24), n_train=1, n_val=2, spacing=2.0)
    out = tmp_path / "out"
    assert masks.main(["--dataset", str(dataset), "--pairs", "1", "--radius", "6", "--threads", "1",
                       "--output", str(out), "--json", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert [r["row"] for r in result["rows"]] == list(masks.ROWS)
    intact = result["rows"][0]
    assert intact["deviation_mm"] == 0.0 and 0.0 < intact["dice"] <= 1.0
    assert all(np.isfinite(r["deviation_mm"]) and r["cavity_voxels"] > 0 for r in result["rows"])
    original, _ = read_image(next((dataset / "imagesVal").glob("*_0002_0000.nii.gz")))
    cavity_image, _ = read_image(out / "pair00" / "moving_cavity.nii.gz")
    mask, _ = read_image(out / "pair00" / "moving_mask.nii.gz")
    emptied = (cavity_image == 0) & (original > 0)
    assert emptied.sum() == result["rows"][0]["cavity_voxels"] and (mask[emptied] == 0).all()
    assert int((mask == 0).sum()) > emptied.sum() and np.array_equal(cavity_image[~emptied], original[~emptied])
    assert "cavity + mask" in result["table"]
