"""benchmarks/accuracy.py without training: the demons field keeps the pull convention (checked with scipy), and a
run of the classical methods on a tiny dataset writes each method's fields, metrics, the table and the JSON rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnreg.dataset.image_io import Geometry, write_image
from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset

accuracy = load_benchmark("accuracy")


def test_itk_to_voxel_field_inverts_direction_and_spacing() -> None:
    geometry = Geometry((2, 2, 2), (2.0, 1.0, 0.5), (0.0, 0.0, 0.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    u = np.array([1.0, -2.0, 3.0])
    matrix = np.asarray(geometry.direction, float).reshape(3, 3) @ np.diag(geometry.spacing)
    mm = np.broadcast_to(matrix @ u, (2, 2, 2, 3))
    np.testing.assert_allclose(accuracy.itk_to_voxel_field(mm, geometry)[1, 0, 1], u, atol=1e-6)


def test_demons_recovers_a_translation_with_the_pull_sign(tmp_path: Path) -> None:
    shape = (28, 32, 24)
    rng = np.random.default_rng(0)
    moving = ndimage.gaussian_filter(rng.random(shape), 2.0)
    moving = np.where(np.pad(np.ones((20, 24, 16), bool), 4), (moving - moving.min()) / np.ptp(moving) * 255, 0)
    shift = np.array([1.5, -1.0, 0.0])
    coords = np.mgrid[tuple(slice(0, s) for s in shape)].astype(float) + shift.reshape(3, 1, 1, 1)
    fixed = ndimage.map_coordinates(moving, coords, order=1, mode="constant")      # fixed(x) = moving(x + t)
    geometry = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(fixed.astype(np.float32), geometry, tmp_path / "F_0001_0000.nii.gz")
    write_image(moving.astype(np.float32), geometry, tmp_path / "M_0002_0000.nii.gz")
    field = accuracy.demons_field(tmp_path / "F_0001_0000.nii.gz", tmp_path / "M_0002_0000.nii.gz")
    inner = (slice(8, -8),) * 3
    np.testing.assert_allclose(np.median(field[inner].reshape(-1, 3), axis=0), shift, atol=0.4)


def test_classical_methods_run_end_to_end(tmp_path: Path) -> None:
    dataset = make_learn2reg_dataset(tmp_path / "Tiny", shape=(24, 28, 20), n_train=2, n_val=2)
    out, rows_json = tmp_path / "bench", tmp_path / "acc.json"
    assert accuracy.main(["--dataset", str(dataset), "--train-minutes", "0", "--output", str(out), "--json",
                          str(rows_json), "--methods", "demons,ants_syn,zero"]) == 0
    result = json.loads(rows_json.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert result["pairs"] == 2
    for method in ("demons", "zero"):
        assert len(list((out / method).glob("disp_*.nii.gz"))) == 2
        assert set(rows[method]) == {"method", "dice", "hd95", "tre", "ndv", "seconds_per_pair", "train_minutes"}
        assert 0 < rows[method]["dice"] <= 1
    assert rows["demons"]["dice"] > rows["zero"]["dice"]
    assert rows["zero"]["ndv"] == 0.0
    if not accuracy.ants_available():
        assert "ants_syn" not in rows and any("antspyx is not installed" in n for n in result["notes"])
    # the dataset is linked, never copied or modified
    assert (out / "work" / "raw" / f"Dataset{accuracy.BENCH_ID}_Tiny").is_symlink()


@pytest.mark.parametrize("help_has_budget, expected", [(True, ["--time-budget", "2.5"]), (False, ["--epochs", "2"])])
def test_train_arguments_prefer_the_time_budget(monkeypatch: pytest.MonkeyPatch, help_has_budget: bool,
                                                expected: list[str]) -> None:
    class Done:
        stdout = "  --time-budget MINUTES" if help_has_budget else "  --epochs INTEGER"

    monkeypatch.setattr(accuracy.subprocess, "run", lambda *a, **k: Done())
    assert accuracy.train_arguments(2.5, {})[:len(expected)] == expected
