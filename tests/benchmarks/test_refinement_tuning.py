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
    differences = result["differences"]      # the second setting against the first, per metric
    assert [d["setting"] for d in differences] == ["steps=3,grid_factor=2"]
    assert differences[0]["reference"] == "steps=3,fine_steps=2"
    first, second = rows["steps=3,fine_steps=2"], rows["steps=3,grid_factor=2"]
    expected = sum(a - b for a, b in zip(second["per_pair_hd95"], first["per_pair_hd95"])) / 2
    assert abs(differences[0]["hd95"]["mean"] - expected) < 1e-9 and differences[0]["dice"]["pairs"] == 2


def test_paired_differences_count_better_pairs_by_each_metric_s_direction_and_skip_undefined_tre() -> None:
    """Dice higher is better, HD95 and TRE* lower; a NaN TRE* (a vanished blob) leaves that pair out."""
    nan = float("nan")
    rows = [{"setting": "network", "per_pair_dice": [0.5] * 4, "per_pair_hd95": [3.0] * 4,
             "per_pair_tre_proxy": [2.0] * 4},
            {"setting": "recorded", "per_pair_dice": [0.70, 0.70, 0.70, 0.70], "per_pair_hd95": [2.0] * 4,
             "per_pair_tre_proxy": [1.0, 1.0, 1.0, 1.0]},
            {"setting": "wide", "per_pair_dice": [0.71, 0.72, 0.69, 0.71], "per_pair_hd95": [2.1, 2.1, 1.9, 2.1],
             "per_pair_tre_proxy": [0.9, nan, 0.8, 1.1]}]
    (entry,) = tuning.paired_differences(rows, "recorded")
    assert entry["setting"] == "wide" and entry["reference"] == "recorded"
    assert entry["dice"]["better"] == 3 and abs(entry["dice"]["mean"] - 0.0075) < 1e-12
    assert entry["hd95"]["better"] == 1 and abs(entry["hd95"]["mean"] - 0.05) < 1e-12
    assert entry["tre_proxy"]["pairs"] == 3 and entry["tre_proxy"]["better"] == 2
    assert abs(entry["tre_proxy"]["mean"] + 0.2 / 3) < 1e-12          # -0.1, -0.2, +0.1
    low, high = entry["dice"]["ci95"]
    assert -0.01 <= low <= entry["dice"]["mean"] <= high <= 0.02
    assert "wide" in tuning.format_differences([entry]) and "HD95 +0.0500" in tuning.format_differences([entry])
