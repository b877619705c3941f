"""benchmarks/accuracy.py without training: every anchor's field keeps the challenge convention (a known translation,
skipped when its package is missing), a missing package is a row, the slow anchors' cache is reused, the bootstrap
interval matches a hand-computed case, and seeds give one row each plus their mean and the paired differences."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from scipy import ndimage

from nnreg.dataset.image_io import Geometry, read_image, write_displacement
from nnreg.inference.export import pair_outputs
from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset

accuracy = load_benchmark("accuracy")
anchors = accuracy.anchors
report = accuracy.report

# anisotropic spacing and a permuted, flipped direction: a wrong mm -> voxel conversion or axis order shows
GEOMETRY = Geometry((28, 32, 24), (2.0, 1.0, 1.5), (3.0, 4.0, 5.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
SHIFT = np.array([1.5, -1.0, 0.5])          # distinct per axis: a swapped axis or a flipped sign is > 0.35 off


def test_itk_to_voxel_field_inverts_direction_and_spacing() -> None:
    geometry = Geometry((2, 2, 2), (2.0, 1.0, 0.5), (0.0, 0.0, 0.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    u = np.array([1.0, -2.0, 3.0])
    matrix = np.asarray(geometry.direction, float).reshape(3, 3) @ np.diag(geometry.spacing)
    mm = np.broadcast_to(matrix @ u, (2, 2, 2, 3))
    np.testing.assert_allclose(anchors.itk_to_voxel_field(mm, geometry)[1, 0, 1], u, atol=1e-6)


def translated_pair() -> tuple[np.ndarray, np.ndarray]:
    """(fixed, moving) with ``fixed(x) = moving(x + SHIFT)``: the pull field of the pair is SHIFT everywhere."""
    rng = np.random.default_rng(0)
    moving = ndimage.gaussian_filter(rng.random(GEOMETRY.shape), 2.0)
    moving = np.where(np.pad(np.ones((20, 24, 16), bool), 4), (moving - moving.min()) / np.ptp(moving) * 255, 0)
    coords = np.mgrid[tuple(slice(0, s) for s in GEOMETRY.shape)].astype(float) + SHIFT.reshape(3, 1, 1, 1)
    fixed = ndimage.map_coordinates(moving, coords, order=1, mode="constant")
    return fixed.astype(np.float32), moving.astype(np.float32)


# ants_syn runs the same conversion as ants_synquick (and takes ~40 s on this image): not repeated here
@pytest.mark.parametrize("name", ["demons", "greedy", "greedy_sv", "convexadam", "convexadam_lumir", "ants_synquick"])
def test_anchor_recovers_a_translation_as_a_voxel_pull_field(name: str) -> None:
    anchor = anchors.ANCHORS[name]
    pytest.importorskip(anchor.module)
    fixed, moving = translated_pair()
    field = anchor.register(fixed, moving, GEOMETRY, anchor.settings)
    assert field.shape == (*GEOMETRY.shape, 3) and field.dtype == np.float32
    inner = (slice(8, -8),) * 3
    np.testing.assert_allclose(np.median(field[inner].reshape(-1, 3), axis=0), SHIFT, atol=0.35)


def test_bootstrap_interval_matches_a_hand_computed_case() -> None:
    # differences (0, 0, 0, 1): the resampled mean is k/4 with k ~ Binomial(4, 1/4): P(k <= 2) = 0.949 < 0.975 <
    # P(k <= 3) = 0.996, and P(k = 0) = 0.316 > 0.025, so the 95 % percentile interval is [0, 0.75]
    low, high = report.bootstrap_interval([0.0, 0.0, 0.0, 1.0])
    assert (low, high) == (0.0, 0.75)
    assert low <= 0.25 <= high
    assert report.bootstrap_interval([0.02] * 5) == pytest.approx((0.02, 0.02))
    differences = np.random.default_rng(3).normal(0.01, 0.02, 12)
    low, high = report.bootstrap_interval(differences)
    assert low < differences.mean() < high
    assert report.bootstrap_interval(differences) == (low, high)           # the fixed seed: the same interval


def test_paired_difference_pairs_by_case_and_counts_wins() -> None:
    mine = {"a": 0.8, "b": 0.7, "c": 0.6, "only_mine": 0.1}
    theirs = {"a": 0.7, "b": 0.72, "c": 0.5}
    result = report.paired_difference(mine, theirs)
    assert result["pairs"] == 3 and result["reference_ahead"] == 2
    assert result["mean"] == pytest.approx((0.1 - 0.02 + 0.1) / 3)
    assert result["ci95"][0] <= result["mean"] <= result["ci95"][1]
    assert report.mean_over_seeds([{"a": 0.6, "b": 0.5}, {"a": 0.8}]) == {"a": pytest.approx(0.7)}


def test_missing_package_is_a_row_and_classical_methods_run_end_to_end(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "picsl_greedy", None)                 # import picsl_greedy -> ImportError
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=2, n_val=2)
    out, rows_json = tmp_path / "bench", tmp_path / "acc.json"
    assert accuracy.main(["--dataset", str(dataset), "--train-minutes", "0", "--output", str(out), "--json",
                          str(rows_json), "--methods", "zero", "--anchors", "demons,greedy"]) == 0
    result = json.loads(rows_json.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert result["pairs"] == 2 and list(rows) == ["demons", "greedy", "zero"]
    assert rows["greedy"]["status"] == "not installed (pip install picsl-greedy)" and rows["greedy"]["dice"] is None
    assert "| Greedy (WNCC 2x2x2, 100x50x10) |  | not installed (pip install picsl-greedy) |" in capsys.readouterr().out
    for method in ("demons", "zero"):
        assert len(list((out / method).glob("disp_*.nii.gz"))) == 2
        assert set(rows[method]) == set(accuracy.ROW_KEYS)
        assert 0 < rows[method]["dice"] <= 1 and rows[method]["seconds_per_pair"] > 0
        assert len(rows[method]["per_pair_dice"]) == 2
    assert rows["demons"]["dice"] > rows["zero"]["dice"]
    assert rows["zero"]["ndv"] == 0.0
    assert result["differences"] == []                                     # no nnreg row to compare
    # the dataset is linked, never copied or modified
    assert (out / "work" / "raw" / f"Dataset{accuracy.BENCH_ID}_Tiny").is_symlink()


def test_slow_anchor_fields_are_reused_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=2, n_val=2)
    pairs = accuracy.validation_pairs(dataset)
    calls = []

    def counted(fixed: np.ndarray, moving: np.ndarray, geometry: Geometry, settings: dict) -> np.ndarray:
        calls.append(settings["shift"])
        return np.full((*fixed.shape, 3), settings["shift"], np.float32)

    slow = anchors.Anchor("slow", "a slow tool", "numpy", "numpy", counted, {"shift": 0.5}, cached=True)
    monkeypatch.setitem(anchors.ANCHORS, "slow", slow)
    cache = tmp_path / "cache"
    first = accuracy.anchor_rows(["slow"], pairs, tmp_path / "run1", cache, tmp_path / "log")[0]
    second = accuracy.anchor_rows(["slow"], pairs, tmp_path / "run2", cache, tmp_path / "log")[0]
    assert calls == [0.5, 0.5]                                             # the second run computed nothing
    assert (first["cached_pairs"], second["cached_pairs"]) == (0, 2)
    assert second["seconds_per_pair"] == pytest.approx(first["seconds_per_pair"])   # the recorded seconds
    for fixed, moving in pairs:
        a = (tmp_path / "run1" / "slow" / pair_outputs(Path(), fixed, moving).displacement.name).read_bytes()
        assert (tmp_path / "run2" / "slow" / pair_outputs(Path(), fixed, moving).displacement.name).read_bytes() == a
    # other settings are another key: computed again
    monkeypatch.setitem(anchors.ANCHORS, "slow", dataclasses.replace(slow, settings={"shift": 1.0}))
    accuracy.anchor_rows(["slow"], pairs, tmp_path / "run3", cache, tmp_path / "log")
    assert calls == [0.5, 0.5, 1.0, 1.0]


def fake_commands(dataset: Path, commands: list[tuple[list[str], str]],
                  shift: Callable[[list[str], dict[str, str]], float]) -> Callable[..., float]:
    """A stand-in for ``accuracy.run``: records every command with its results folder, runs nnreg_evaluate for real
    and makes nnreg_predict write constant fields of ``shift(command, env)`` voxels (no training, no network)."""
    real_run = accuracy.run

    def fake_run(command: list[str], log: Path, env: dict[str, str]) -> float:
        commands.append((command, env["nnReg_results"]))
        if command[0] == "nnreg_evaluate":
            return real_run(command, log, env)
        if command[0] == "nnreg_predict":
            folder = Path(command[command.index("-o") + 1])
            for fixed, moving in accuracy.validation_pairs(dataset):
                geometry = read_image(fixed)[1]
                write_displacement(np.full((*geometry.shape, 3), shift(command, env), np.float32),
                                   pair_outputs(folder, fixed, moving).displacement, geometry)
        return 1.0

    return fake_run


def test_seeds_train_independent_models_with_rows_summary_and_differences(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """nnreg_train gets --seed 12345 / 12346 with separate results folders; nnreg_predict is replaced by fields of a
    seed-dependent size (no training), nnreg_evaluate runs for real."""
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=2, n_val=2)
    commands: list[tuple[list[str], str]] = []
    fake_run = fake_commands(dataset, commands,
                             lambda command, env: 0.0 if env["nnReg_results"].endswith("results") else 1.0)
    monkeypatch.setattr(accuracy, "run", fake_run)
    monkeypatch.setattr(accuracy, "train_arguments", lambda minutes, env: ["--time-budget", f"{minutes:g}"])
    out, rows_json = tmp_path / "bench", tmp_path / "acc.json"
    assert accuracy.main(["--dataset", str(dataset), "--train-minutes", "1", "--output", str(out), "--json",
                          str(rows_json), "--methods", "nnreg", "--anchors", "demons", "--seeds", "2"]) == 0
    trains = [(c, results) for c, results in commands if c[0] == "nnreg_train"]
    assert [c[c.index("--seed") + 1] for c, _ in trains] == ["12345", "12346"]
    assert [Path(results).name for _, results in trains] == ["results", "results_seed12346"]
    assert sum(c[0] == "nnreg_plan_and_preprocess" for c, _ in commands) == 1
    result = json.loads(rows_json.read_text())
    assert result["seeds"] == [12345, 12346]
    nnreg = [r for r in result["rows"] if r["method"] == "nnreg"]
    assert [r["seed"] for r in nnreg] == [12345, 12346] and nnreg[0]["dice"] != nnreg[1]["dice"]
    summary = result["summary"][0]
    assert summary["method"] == "nnreg" and summary["seeds"] == [12345, 12346]
    assert summary["dice_mean"] == pytest.approx((nnreg[0]["dice"] + nnreg[1]["dice"]) / 2)
    assert summary["dice_min"] < summary["dice_max"]
    assert [(d["anchor"], d["seed"]) for d in result["differences"]] == [("demons", 12345), ("demons", 12346),
                                                                       ("demons", "mean")]
    demons = next(r for r in result["rows"] if r["method"] == "demons")
    first = result["differences"][0]
    assert first["reference"] == "nnreg" and first["pairs"] == 2
    assert first["mean"] == pytest.approx(nnreg[0]["dice"] - demons["dice"])
    assert first["ci95"][0] <= first["mean"] <= first["ci95"][1]


@pytest.mark.parametrize("help_has_budget, expected", [(True, ["--time-budget", "2.5"]), (False, ["--epochs", "2"])])
def test_train_arguments_prefer_the_time_budget(monkeypatch: pytest.MonkeyPatch, help_has_budget: bool,
                                                expected: list[str]) -> None:
    class Done:
        stdout = "  --time-budget MINUTES" if help_has_budget else "  --epochs INTEGER"

    monkeypatch.setattr(accuracy.subprocess, "run", lambda *a, **k: Done())
    assert accuracy.train_arguments(2.5, {})[:len(expected)] == expected


def test_identity_start_runs_once_and_is_compared_like_an_anchor(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``nnreg_identity``: one ``nnreg_predict --start identity`` with the first seed's plans (not one per seed), a
    row of kind ``ablation`` without a seed, and nnreg_refined minus it in the paired differences."""
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=2, n_val=2)
    commands: list[tuple[list[str], str]] = []
    fake_run = fake_commands(dataset, commands, lambda command, env: 1.0 if "--start" in command else 0.0)
    monkeypatch.setattr(accuracy, "run", fake_run)
    monkeypatch.setattr(accuracy, "train_arguments", lambda minutes, env: ["--time-budget", f"{minutes:g}"])
    rows_json = tmp_path / "acc.json"
    assert accuracy.main(["--dataset", str(dataset), "--train-minutes", "1", "--output", str(tmp_path / "bench"),
                          "--json", str(rows_json), "--methods", "nnreg_refined,nnreg_identity", "--anchors", "none",
                          "--seeds", "2"]) == 0
    predicts = [(c, results) for c, results in commands if c[0] == "nnreg_predict"]
    starts = [(c[c.index("--start") + 1], Path(results).name) for c, results in predicts if "--start" in c]
    assert starts == [("identity", "results")]                 # once, with the first seed's model folder
    assert sum("--start" not in c for c, _ in predicts) == 2   # nnreg_refined per seed
    result = json.loads(rows_json.read_text())
    identity = next(r for r in result["rows"] if r["method"] == "nnreg_identity")
    assert identity["kind"] == "ablation" and identity["seed"] is None and identity["dice"] is not None
    compared = [(d["reference"], d["anchor"], d["seed"]) for d in result["differences"]]
    assert compared == [("nnreg_refined", "nnreg_identity", 12345), ("nnreg_refined", "nnreg_identity", 12346),
                        ("nnreg_refined", "nnreg_identity", "mean")]
    refined = next(r for r in result["rows"] if r["method"] == "nnreg_refined" and r["seed"] == 12345)
    assert result["differences"][0]["mean"] == pytest.approx(refined["dice"] - identity["dice"])


def test_refinement_settings_reach_the_refined_and_identity_rows_only(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--instance-optimization-settings`` and ``--finer-grid-settings`` go to nnreg_predict for ``nnreg_refined``
    and ``nnreg_identity``, not for the network alone, and the JSON notes name them."""
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=2, n_val=2)
    commands: list[tuple[list[str], str]] = []
    monkeypatch.setattr(accuracy, "run", fake_commands(dataset, commands, lambda command, env: 0.0))
    monkeypatch.setattr(accuracy, "train_arguments", lambda minutes, env: ["--time-budget", f"{minutes:g}"])
    rows_json = tmp_path / "acc.json"
    assert accuracy.main(["--dataset", str(dataset), "--train-minutes", "1", "--output", str(tmp_path / "bench"),
                          "--json", str(rows_json), "--methods", "nnreg,nnreg_refined,nnreg_identity",
                          "--anchors", "none", "--instance-optimization-settings", "edge_kappa=0.1",
                          "--finer-grid-settings", "edge_kappa=0.1,steps=4"]) == 0
    predicts = {Path(c[c.index("-o") + 1]).name: c for c, _ in commands if c[0] == "nnreg_predict"}
    assert set(predicts) == {"nnreg", "nnreg_refined", "nnreg_identity"}
    for name in ("nnreg_refined", "nnreg_identity"):
        command = predicts[name]
        assert command[command.index("--finer-grid-settings") + 1] == "edge_kappa=0.1,steps=4"
        assert command[command.index("--instance-optimization-settings") + 1] == "edge_kappa=0.1"
    assert "--finer-grid-settings" not in predicts["nnreg"]
    assert "--instance-optimization-settings" not in predicts["nnreg"]
    notes = json.loads(rows_json.read_text())["notes"]
    assert "nnreg_refined: --finer-grid-settings edge_kappa=0.1,steps=4" in notes
