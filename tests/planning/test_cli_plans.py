"""nnreg_plan_and_preprocess with the memory-driven planner: the printed table, budgets, and hand edits winning."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnreg.cli.plan_and_preprocess import main
from nnreg.planning.plans import Plans


@pytest.fixture()
def raw_tiny(tiny_dataset: Path, nnreg_env: dict[str, Path]) -> Path:
    dst = nnreg_env["raw"] / "Dataset901_Tiny"
    shutil.copytree(tiny_dataset, dst)
    return dst


def _run(*args: str):
    return CliRunner().invoke(main, ["-d", "901", "-np", "0", "--no-pp", *args], catch_exceptions=False)


def test_table_budgets_and_hand_edits(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    out = nnreg_env["preprocessed"] / "Dataset901_Tiny"
    result = _run("--device", "cuda", "--gpu-memory-target", "80")
    assert result.exit_code == 0, result.output
    for column in ("shape", "width", "batch", "params", "TFLOP/step", "train GB", "infer GB", "budget GB"):
        assert column in result.output
    plans = Plans.load(out / "nnRegPlans.json")
    full = plans.configuration("3d_fullres")
    assert full.architecture["kwargs"]["base_channels"] == 64 and full.batch_size == 4
    assert full.notes["predicted_training_peak_gb"] <= full.notes["usable_gb"]
    assert plans.planner["decision"] == "memory_driven_decision"

    # a smaller budget under another plans identifier gives a poorer plan and leaves the first file alone
    before = (out / "nnRegPlans.json").read_text()
    result = _run("--device", "cuda", "--gpu-memory-target", "0.7", "-p", "Small")
    assert result.exit_code == 0, result.output
    small = Plans.load(out / "Small.json").configuration("3d_fullres")
    assert (small.architecture["kwargs"]["base_channels"], small.batch_size) < (64, 4)
    assert (out / "nnRegPlans.json").read_text() == before

    # a hand edit wins: the plan is reused as edited and the table re-predicts it
    data = json.loads((out / "nnRegPlans.json").read_text())
    data["configurations"]["3d_fullres"]["architecture"]["kwargs"]["base_channels"] = 8
    data["configurations"]["3d_fullres"]["batch_size"] = 1
    (out / "nnRegPlans.json").write_text(json.dumps(data))
    result = _run("--device", "cuda", "--gpu-memory-target", "80")
    assert result.exit_code == 0, result.output
    edited = Plans.load(out / "nnRegPlans.json").configuration("3d_fullres")
    assert edited.architecture["kwargs"]["base_channels"] == 8 and edited.batch_size == 1
    assert "recomputed for hand-edited" in result.output


def test_too_small_budget_is_one_line(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["-d", "901", "-np", "0", "--no-pp", "--device", "cpu", "--memory-target",
                                       "0.2"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "too small" in lines[0] and "--memory-target" in lines[0], result.output


@pytest.mark.parametrize("cuda", [False, True])
def test_default_device_is_cuda_only_where_cuda_is_present(raw_tiny: Path, nnreg_env: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch, cuda: bool) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    result = _run("--memory-target", "4", "--gpu-memory-target", "4")
    assert result.exit_code == 0, result.output
    plans = Plans.load(nnreg_env["preprocessed"] / "Dataset901_Tiny" / "nnRegPlans.json")
    assert plans.planner["device"] == ("cuda" if cuda else "cpu")
    assert ("planned for the CPU" in result.output) is not cuda
    assert "why (3d_fullres)" in result.output
