"""dataset_format.md: every command accepts a dataset's id, its name or a path to its folder. A new user plans a
dataset by its path, then trains and predicts with the same path (before, nnreg_train PATH failed and its advice,
"run nnreg_plan_and_preprocess -d PATH first", led back to the same error)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnreg.cli.plan_and_preprocess import main as plan
from nnreg.cli.predict import main as predict
from nnreg.cli.train import main as train

TRAIN = ["-c", "3d_halfres", "--device", "cpu", "--epochs", "1", "--iterations-per-epoch", "1", "--val-pairs", "0",
         "--num-workers", "0", "--no-final-validation"]


def test_plan_train_and_predict_by_path(tiny_dataset: Path, nnreg_env: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    shutil.copytree(tiny_dataset, work / "data" / "Dataset777_Mine")
    monkeypatch.chdir(work)
    relative = "data/Dataset777_Mine"
    result = CliRunner().invoke(plan, ["-d", relative, "-c", "3d_halfres", "-np", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (nnreg_env["preprocessed"] / "Dataset777_Mine" / "nnRegPlans.json").is_file()

    result = CliRunner().invoke(train, [relative + "/", "0", *TRAIN])
    assert result.exit_code == 0, result.output
    fold = nnreg_env["results"] / "Dataset777_Mine" / "nnRegTrainer__nnRegPlans__3d_halfres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()

    images = sorted((work / relative / "imagesVal").glob("*.nii.gz"))
    result = CliRunner().invoke(predict, ["-d", str(work / relative), "-c", "3d_halfres", "-f", "0", "--device", "cpu",
                                          "--fixed", str(images[0]), "--moving", str(images[1]), "-o", "out",
                                          "--instance-optimization", "0", "-npp", "0", "-nps", "0"])
    assert result.exit_code == 0, result.output
    assert len(list((work / "out").glob("disp_*.nii.gz"))) == 1


def test_a_path_that_is_not_planned_says_how_to_plan_it(tiny_dataset: Path, nnreg_env: dict[str, Path]) -> None:
    result = CliRunner().invoke(train, [str(tiny_dataset), "0", *TRAIN])
    assert result.exit_code == 2
    assert result.output.strip() == (f"nnreg: error: dataset {tiny_dataset} is not preprocessed in "
                                     f"{nnreg_env['preprocessed']} (run nnreg_plan_and_preprocess -d {tiny_dataset} "
                                     f"first)")
