"""benchmarks/refinement_tuning.py: the training-pair schedule, and a run on a tiny model that
scores the network and each setting on training pairs only."""
from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.conftest import load_benchmark
from tests.inference.helpers import planned_dataset, write_model_folder

tuning = load_benchmark("refinement_tuning")


def test_pairs_visit_every_subject_before_repeating_and_never_pair_an_image_with_itself() -> None:
    images = list("abcd")
    pairs = tuning.make_pairs(images, 12)
    assert len(pairs) == 12 == len(set(pairs)) and all(f != m for f, m in pairs)
    assert sorted(f for f, _ in pairs[:4]) == images and sorted(m for _, m in pairs[:4]) == images
    assert len(tuning.make_pairs(images, 100)) == 12


def test_settings_split_into_refinement_and_finer_grid_keys() -> None:
    from nnreg.inference.refinement_settings import InstanceOptimization

    refinement, finer = tuning.parse_setting("steps=5,finer.parametrisation=velocity,finer.lambda_reg=none,"
                                             "lambda_reg=2", InstanceOptimization(steps=30))
    assert refinement.steps == 5 and refinement.lambda_reg == 2.0
    assert finer.parametrisation == "velocity" and finer.lambda_reg is None and finer.steps == 8


def test_cross_miss_counts_moving_voxels_no_fixed_voxel_reaches() -> None:
    """Identity: every moving voxel is hit. A pull field that samples every 4th moving voxel along each axis leaves
    crosses no fixed voxel lands in (the official TRE's vanishing landmark blobs)."""
    import numpy as np

    moving = np.ones((16, 16, 16), np.float32)
    assert tuning.cross_miss_ppm(np.zeros((16, 16, 16, 3), np.float32), moving) == 0.0
    grid = np.stack(np.meshgrid(*(np.arange(4),) * 3, indexing="ij"), axis=-1).astype(np.float32)
    stretched = 3.0 * grid                                     # x + u(x) = 4x
    assert tuning.cross_miss_ppm(stretched, moving) > 0.5e6


def test_run_on_a_tiny_model_scores_training_pairs(tmp_path: Path) -> None:
    root, plans = planned_dataset(tmp_path, shape=(24, 28, 20), n_train=5, n_val=2)
    configuration = "3d_fullres"
    folder = write_model_folder(tmp_path / "results", plans, configuration, folds=("all",))
    out = tmp_path / "tuning.json"
    assert tuning.main(["-m", str(folder), "-f", "all", "--dataset", str(root), "--max-pairs", "2", "--json",
                        str(out), "--settings", "steps=3,fine_steps=2", "steps=3,grid_factor=2"]) == 0
    result = json.loads(out.read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"network", "steps=3,fine_steps=2", "steps=3,grid_factor=2"}
    assert rows["network"]["mean_steps"] == 0 and rows["steps=3,grid_factor=2"]["settings"]["grid_factor"] == 2
    assert all(r["pairs"] == 2 and 0 <= r["dice"] <= 1 and r["ndv"] >= 0 for r in rows.values())
    assert all(len(r["per_pair_dice"]) == len(r["per_pair_tre_proxy"]) == 2 for r in rows.values())
    assert all("imagesTr" in p for pair in result["pairs"] for p in pair)
