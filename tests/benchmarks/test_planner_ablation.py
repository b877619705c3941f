"""benchmarks/planner_ablation.py on a tiny dataset with a tiny budget: each candidate is planned, trained, scored on
the fold's held-out images and on the dataset's validation pairs through the documented commands."""
from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset

ablation = load_benchmark("planner_ablation")


def test_candidates_are_plans_of_the_documented_cli() -> None:
    for name, candidate in ablation.CANDIDATES.items():
        assert candidate.configuration in ("3d_fullres", "3d_halfres"), name
        assert all(flag.startswith("--") for flag in candidate.plan_flags[::2] + candidate.train_flags), name
    assert set(ablation.DEFAULT_CANDIDATES) <= set(ablation.CANDIDATES)
    # candidates that train differently never share a model folder
    folders = [(c.plans, c.configuration) for c in ablation.CANDIDATES.values()]
    assert len(folders) == len(set(folders))


def test_one_candidate_end_to_end(tmp_path: Path) -> None:
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=6, n_val=2)
    out, rows_json = tmp_path / "ablation", tmp_path / "ablation.json"
    assert ablation.main(["--dataset", str(dataset), "--minutes", "0.02", "--output", str(out), "--json",
                          str(rows_json), "--candidates", "w8-full", "-np", "0"]) == 0
    result = json.loads(rows_json.read_text())
    (row,) = result["rows"]
    assert row["candidate"] == "w8-full" and row["configuration"] == "3d_fullres"
    assert row["epochs"] >= 1 and row["iterations_per_epoch"] >= 1 and row["why"]
    assert row["fold_pairs"] == 2 and 0 < row["fold_dice"] <= 1              # fold 0 holds out 2 images
    assert 0 < row["held_out_dsc"] <= 1 and row["field_spacing_mm"] == [1.0, 1.0, 1.0]
    assert len(list((out / "w8-full").glob("disp_*.nii.gz"))) == 2
    assert (out / "work" / "raw" / f"Dataset{ablation.BENCH_ID}_Tiny").is_symlink()
    # a refined column for the same model, without training again
    trainings = (out / "commands.log").read_text().count("$ nnreg_train")
    assert ablation.main(["--dataset", str(dataset), "--minutes", "0.02", "--output", str(out), "--json",
                          str(rows_json), "--candidates", "w8-full", "-np", "0", "--refined", "--reuse-models"]) == 0
    assert (out / "commands.log").read_text().count("$ nnreg_train") == trainings
    (row,) = json.loads(rows_json.read_text())["rows"]
    assert 0 < row["refined_dsc"] <= 1 and 0 < row["held_out_dsc"] <= 1 and row["train_wall_minutes"] is None
    assert len(list((out / "w8-full_refined").glob("disp_*.nii.gz"))) == 2
