"""``--preset paper``: the paper's schedule (epoch = one pass over the training images), explicit options win."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnreg.cli.train import PRESET_NAMES, main
from nnreg.training.presets import PRESETS, iterations_for_one_pass, preset_overrides
from nnreg.training.run import prepare_job
from nnreg.utilities.errors import ConfigurationError
from tests.training.conftest import TINY_BATCH, fold_folder


def test_one_pass_per_epoch_and_paper_values() -> None:
    assert set(PRESET_NAMES) == set(PRESETS)
    assert iterations_for_one_pass(3374, 1, 1) == 3374          # the paper's 3374 training images, batch 1
    assert iterations_for_one_pass(3384, 2, 4) == 423
    assert iterations_for_one_pass(5, 2, 1) == 3                 # a last, partial batch still counts
    paper = preset_overrides("paper", 3374, 1)
    assert (paper["epochs"], paper["iterations_per_epoch"], paper["lr"]) == (200, 3374, 4e-4)
    assert (paper["lambda_ncc"], paper["lambda_reg"]) == (1.0, 6.0)
    assert paper["augmentation"] is False and paper["spatial_augmentation"] is False
    assert paper["grad_clip_norm"] is None
    with pytest.raises(ConfigurationError):
        preset_overrides("nope", 10, 1)
    with pytest.raises(ConfigurationError):
        iterations_for_one_pass(0, 1, 1)


def test_prepare_job_applies_the_preset_for_the_world_size(train_env: dict[str, Path]) -> None:
    job = prepare_job("901", "0", device="cpu", preset="paper", world_size=2, overrides={"epochs": 3})
    hp = job.hyperparameters
    n = len(job.workspace.train_cases)
    assert hp.iterations_per_epoch == math.ceil(n / (TINY_BATCH * 2))
    assert hp.epochs == 3                                        # explicit options win over the preset
    assert hp.augmentation is False and hp.grad_clip_norm is None and hp.lambda_reg == 6.0
    default = prepare_job("901", "0", device="cpu").hyperparameters
    assert default.augmentation is True and default.grad_clip_norm == 12.0


def test_preset_from_the_command_line(train_env: dict[str, Path]) -> None:
    args = ["901", "0", "--preset", "paper", "--epochs", "1", "--device", "cpu", "--val-pairs", "1",
            "--num-workers", "0", "--ncc-window", "5", "--no-final-validation"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    debug = json.loads((fold_folder(train_env) / "debug.json").read_text())
    hp = debug["init_args"]["hyperparameters"]
    assert hp["iterations_per_epoch"] == math.ceil(len(debug["train_cases"]) / TINY_BATCH)
    assert (hp["epochs"], hp["augmentation"], hp["grad_clip_norm"], hp["lr"]) == (1, False, None, 4e-4)
    bad = CliRunner().invoke(main, ["901", "0", "--preset", "nope"])
    assert bad.exit_code != 0 and "nope" in bad.output
