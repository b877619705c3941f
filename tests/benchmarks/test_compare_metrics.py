"""benchmarks/compare_metrics.py: means over the pairs every file has, TRE also over the pairs where it is finite in
every file, and the first file minus each other with the pairs where the first is better."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmarks.conftest import load_benchmark

compare_metrics = load_benchmark("compare_metrics")


def write_metrics(path: Path, cases: dict[str, tuple[float, float, float]]) -> Path:
    """A metrics.json in the official structure with Dice, HD95 and TRE per case (aggregates unused here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {case: {"DSC": {"mean": d}, "HD95": {"mean": h}, "TRE_lm": {"mean": t},
                   "Non-diffeomorphic Volumes": {"mean": 0.0}} for case, (d, h, t) in cases.items()}
    path.write_text(json.dumps({"name": "x", "aggregates": {}, "cases": body, "eval_version": "2.0"}))
    return path


def test_common_and_finite_pairs_and_the_paired_differences(tmp_path: Path) -> None:
    first = write_metrics(tmp_path / "a" / "metrics.json", {"p1": (0.70, 2.0, 1.0), "p2": (0.80, 3.0, 2.0),
                                                             "p3": (0.60, 4.0, 3.0)})
    second = write_metrics(tmp_path / "b" / "metrics.json", {"p1": (0.65, 2.5, 1.5), "p2": (0.82, 2.0, math.nan)})
    result = compare_metrics.compare([compare_metrics.per_pair(first), compare_metrics.per_pair(second)], ["a", "b"])
    dice, tre = result["metrics"]["dice"], result["metrics"]["tre"]
    assert dice["pairs"] == 2 and dice["means"]["a"] == pytest.approx(0.75)      # p3 is not in b: left out
    assert dice["means"]["b"] == pytest.approx(0.735)
    assert dice["differences"]["b"]["mean"] == pytest.approx(0.015) and dice["differences"]["b"]["first_better"] == 1
    assert tre["pairs"] == 2 and math.isnan(tre["means"]["b"])                    # the official mean: NaN
    assert tre["finite_pairs"] == 1 and tre["finite_means"]["a"] == pytest.approx(1.0)
    assert tre["finite_means"]["b"] == pytest.approx(1.5)
    assert tre["differences"]["b"]["mean"] == pytest.approx(-0.5) and tre["differences"]["b"]["first_better"] == 1
    hd95 = result["metrics"]["hd95"]["differences"]["b"]
    assert hd95["mean"] == pytest.approx(((2.0 - 2.5) + (3.0 - 2.0)) / 2) and hd95["first_better"] == 1


def test_command_line_writes_json_and_refuses_what_cannot_be_compared(tmp_path: Path) -> None:
    first = write_metrics(tmp_path / "a" / "metrics.json", {"p1": (0.7, 2.0, 1.0), "p2": (0.8, 3.0, 2.0)})
    second = write_metrics(tmp_path / "b" / "metrics.json", {"p1": (0.6, 2.5, 1.5), "p2": (0.7, 3.5, 2.5)})
    out = tmp_path / "cmp.json"
    assert compare_metrics.main([str(first), str(second), "--names", "nnreg,anchor", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["names"] == ["nnreg", "anchor"]
    assert saved["metrics"]["dice"]["differences"]["anchor"]["mean"] == pytest.approx(0.1)
    low, high = saved["metrics"]["dice"]["differences"]["anchor"]["ci95"]
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)       # both pairs differ by 0.1
    with pytest.raises(SystemExit):
        compare_metrics.main([str(first)])                                # one file: nothing to compare
    twin = write_metrics(tmp_path / "a" / "metrics_zero_displacement.json", {"p1": (0.5, 3.0, 2.0)})
    with pytest.raises(SystemExit):                                       # both default to the folder's name "a"
        compare_metrics.main([str(first), str(twin)])
    assert compare_metrics.main([str(first), str(twin), "--names", "a,zero"]) == 0
    disjoint = write_metrics(tmp_path / "c" / "metrics.json", {"p9": (0.6, 2.5, 1.5)})
    with pytest.raises(SystemExit):                                       # no pair in common
        compare_metrics.main([str(first), str(disjoint)])
