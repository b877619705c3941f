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


def test_a_gpu_memory_target_plans_for_that_gpu_without_one(raw_tiny: Path, nnreg_env: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """lumir.md tells teams to plan on a login node: no GPU there, yet the plans are for their 24 GB GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = _run("--gpu-memory-target", "24")
    assert result.exit_code == 0, result.output
    plans = Plans.load(nnreg_env["preprocessed"] / "Dataset901_Tiny" / "nnRegPlans.json")
    assert plans.planner["device"] == "cuda" and plans.planner["memory_target_gb"] == 24
    said = [line for line in result.output.splitlines() if line.startswith("planned for ")]
    assert said == ["planned for a GPU with 24 GB of GPU memory (--gpu-memory-target given; no local GPU is needed "
                    "to plan)"], result.output


def test_a_kept_plans_file_says_what_it_was_made_for(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    assert _run("--device", "cpu", "--memory-target", "4").exit_code == 0
    result = _run("--gpu-memory-target", "24")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("planned for "))
    assert line.startswith("planned for the CPU with 4 GB of RAM: the plans file nnRegPlans.json was kept"), line
    assert "asked for a GPU with 24 GB" in line


@pytest.mark.parametrize("args, flag", [(("--gpu-memory-target", "0"), "--gpu-memory-target"),
                                        (("--gpu-memory-target", "-8"), "--gpu-memory-target"),
                                        (("--memory-target", "0"), "--memory-target"),
                                        (("--device", "cuda", "--memory-target", "-1"), "--memory-target"),
                                        (("--device", "cpu", "--gpu-memory-target", "24"), "--gpu-memory-target"),
                                        (("--device", "cuda", "--memory-target", "8"), "--memory-target")])
def test_bad_targets_are_refused_in_one_line(raw_tiny: Path, nnreg_env: dict[str, Path], args: tuple[str, ...],
                                             flag: str) -> None:
    result = _run(*args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnreg: error: ") and flag in lines[0], result.output
    assert not (nnreg_env["preprocessed"] / "Dataset901_Tiny").exists()     # refused before any work


@pytest.mark.parametrize("count", [1, 4])
def test_too_few_training_images_are_refused_before_fingerprinting(tiny_dataset: Path, nnreg_env: dict[str, Path],
                                                                   count: int) -> None:
    root = nnreg_env["raw"] / "Dataset905_Few"
    shutil.copytree(tiny_dataset, root)
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["training"] = dataset["training"][:count]
    (root / "dataset.json").write_text(json.dumps(dataset))
    result = CliRunner().invoke(main, ["-d", str(root), "-np", "0", "--no-pp"], catch_exceptions=False)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"nnreg: error: {root / 'dataset.json'}: {count} training image")
    assert "at least 5" in lines[0] and "fold all needs only 2" in lines[0] and "splits_final.json" in lines[0]
    assert not (nnreg_env["preprocessed"] / "Dataset905_Few").exists()


def test_own_splits_need_only_a_pair(tiny_dataset: Path, nnreg_env: dict[str, Path]) -> None:
    root = nnreg_env["raw"] / "Dataset906_Pair"
    shutil.copytree(tiny_dataset, root)
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["training"] = dataset["training"][:3]
    (root / "dataset.json").write_text(json.dumps(dataset))
    ids = sorted(Path(e["image"]).name.replace(".nii.gz", "") for e in dataset["training"])
    (root / "splits_final.json").write_text(json.dumps([{"train": ids[:2], "val": ids[2:]}]))
    result = CliRunner().invoke(main, ["-d", str(root), "-np", "0", "--no-pp"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dataset["training"] = dataset["training"][:1]
    (root / "dataset.json").write_text(json.dumps(dataset))
    (root / "splits_final.json").write_text(json.dumps([{"train": ids[:1], "val": []}]))
    result = CliRunner().invoke(main, ["-d", str(root), "-np", "0", "--no-pp"], catch_exceptions=False)
    assert result.exit_code == 2 and "at least 2" in result.output, result.output
