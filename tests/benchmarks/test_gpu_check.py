"""benchmarks/gpu_check.py: the refusal without CUDA, and each of its pieces on the CPU at tiny shapes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.benchmarks.conftest import load_benchmark

gpu_check = load_benchmark("gpu_check")
TINY = {"network_class": "CascadeRegNet", "kwargs": dict(gpu_check.TINY_TRAINING_ARCHITECTURE)}


def test_without_cuda_one_line_and_exit_code_3(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == gpu_check.NO_CUDA_EXIT == 3
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA" in lines[0]


def test_planning_uses_the_real_planner_for_a_lumir_shaped_fingerprint() -> None:
    fingerprint = gpu_check.lumir_fingerprint()
    assert fingerprint["median_shape"] == [160, 224, 192]
    plan = gpu_check.plan_lumir(1.0, (16, 16, 16), device="cpu")
    assert plan.shape == [16, 16, 16] and plan.batch_size >= 1
    assert plan.architecture["network_class"] == "CascadeRegNet"
    assert plan.notes["predicted_training_peak_gb"] <= plan.notes["usable_gb"]


def test_training_and_inference_pieces_on_cpu() -> None:
    row = gpu_check.measure_training(TINY, (16, 16, 16), 2, "cpu", steps=1)
    assert row["finite"] and row["steps_per_second"] > 0 and row["pairs_per_second"] == pytest.approx(
        2 * row["steps_per_second"])
    assert "first_step_max_allocated_bytes" not in row          # CUDA memory statistics only on CUDA
    vm = gpu_check.voxelmorph_row((16, 16, 16), "cpu", steps=1)
    assert vm["network"] == "VoxelMorph" and vm["finite"]
    plan = gpu_check.plan_lumir(1.0, (16, 16, 16), device="cpu")
    plan.architecture = TINY
    inference = gpu_check.inference_row(plan, (16, 16, 16), "cpu", pairs=1)
    assert inference["field_shape"] == [16, 16, 16, 3] and inference["seconds_per_pair"] > 0
    report = {"device": "cpu", "torch": torch.__version__, "training": [row | {"budget_gb": 1.0, "network": "tiny"},
                                                                          vm], "inference": [inference]}
    text = gpu_check.table(report)
    assert "VoxelMorph" in text and "s / pair" in text


def test_ddp_step_under_torchrun_with_gloo() -> None:
    row = gpu_check.ddp_step_row("cpu")
    assert row["rc"] == 0, row.get("stderr_tail")
    assert (row["backend"], row["world_size"], row["all_reduce"]) == ("gloo", 1, 1.0)
    assert row["max_grad_difference"] < 1e-6


def test_torchrun_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    row = gpu_check.torchrun_resume_row("cpu", workdir=tmp_path, tiny_network=True)
    assert row["first_rc"] == 0 and row["resume_rc"] == 0, row.get("stderr_tail")
    assert row["final_epoch"] == 3 and row["resumed"]
    assert math.isfinite(row["seconds"])
