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
    assert all("imagesTr" in p for pair in result["pairs"] for p in pair)
