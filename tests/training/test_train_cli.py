"""``nnreg_train`` end to end on tiny data: every output file, the checkpoint contract, bad input as one line."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from nnreg.cli.train import main
from tests.training.conftest import fold_folder

ARGS = ["--device", "cpu", "--iterations-per-epoch", "2", "--val-pairs", "2", "--num-workers", "0",
        "--ncc-window", "5", "--checkpoint-every", "1"]


def test_training_through_the_cli_writes_every_output(train_env: dict[str, Path]) -> None:
    # the final validation runs once, through --val (the same function on_train_end calls)
    result = CliRunner().invoke(main, ["901", "0", "--epochs", "2", "--no-final-validation", *ARGS])
    assert result.exit_code == 0, result.output
    fold = fold_folder(train_env)
    assert not (fold / "validation").exists()
    result = CliRunner().invoke(main, ["901", "0", "--val", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    model = fold.parent
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model / name).is_file(), name
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth", "progress.png",
                 "debug.json", "validation/summary.json"):
        assert (fold / name).is_file(), name
    logs = list(fold.glob("training_log_*.txt"))
    assert len(logs) == 1 and "epoch 2/2" in logs[0].read_text()
    assert not list(fold.rglob("*.tmp-*"))

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    for key in ("format_version", "network_weights", "optimizer_state", "grad_scaler_state", "current_epoch",
                "logging", "best_metric", "trainer_name", "init_args", "rng_state"):
        assert key in checkpoint, key
    assert checkpoint["format_version"] == 1 and checkpoint["current_epoch"] == 2
    assert checkpoint["trainer_name"] == "nnRegTrainer"
    assert checkpoint["init_args"]["configuration"] == "3d_fullres" and checkpoint["init_args"]["fold"] == "0"
    assert checkpoint["init_args"]["hyperparameters"]["ncc_window"] == 5
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["network_weights"])
    assert len(checkpoint["logging"]["train_loss"]) == 2

    debug = json.loads((fold / "debug.json").read_text())
    assert debug["init_args"]["hyperparameters"]["iterations_per_epoch"] == 2
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["fold_pairs"]["num_pairs"] == len(debug["val_cases"]) * (len(debug["val_cases"]) - 1)
    for row in summary["fold_pairs"]["per_pair"]:
        assert {"dice", "hd95", "ndv", "dice_zero_displacement"} <= set(row)
    assert summary["dataset_validation"]["num_pairs"] == 6          # 3 validation images of dataset.json
    assert "tre" in summary["dataset_validation"]["mean"]

    # the model folder alone is enough for the predictor
    from nnreg.inference.predictor import nnRegPredictor

    predictor = nnRegPredictor(device="cpu").initialize_from_trained_model_folder(model, use_folds=("0",))
    image = torch.rand(32, 40, 32).numpy()
    assert predictor.predict_pair(image, image).shape == (32, 40, 32, 3)


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("nnreg: error")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_input_gives_one_line(train_env: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert "nnreg_plan_and_preprocess" in _one_line_error(["901", "0", "--preprocessed", str(empty)])
    assert "unknown fold" in _one_line_error(["901", "7", "--device", "cpu"])
    assert "unknown trainer" in _one_line_error(["901", "0", "-tr", "NoSuchTrainer"])
    assert "no checkpoint to continue" in _one_line_error(["901", "0", "--c", "--device", "cpu"])
    assert "--val needs checkpoint_final" in _one_line_error(["901", "0", "--val", "--device", "cpu"])
    assert "no configuration" in _one_line_error(["901", "0", "-c", "3d_lowres"])


def test_corrupt_or_partial_checkpoint_on_continue_is_one_clear_line(train_env: dict[str, Path]) -> None:
    fold = fold_folder(train_env)
    fold.mkdir(parents=True)
    buffer = fold / "full.pth"
    torch.save({"format_version": 1, "network_weights": {"w": torch.zeros(1000)}}, buffer)
    data = buffer.read_bytes()
    buffer.unlink()
    (fold / "checkpoint_latest.pth").write_bytes(data[: len(data) // 2])          # killed while writing
    line = _one_line_error(["901", "0", "--c", "--device", "cpu"])
    assert "checkpoint_latest.pth" in line and "corrupt or incomplete" in line
    (fold / "checkpoint_latest.pth").write_bytes(data)                             # complete, but not a training one
    line = _one_line_error(["901", "0", "--c", "--device", "cpu"])
    assert "missing" in line and "optimizer_state" in line
