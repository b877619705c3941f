"""Reading a model never runs code: a checkpoint that needs more than tensors and plain data is refused in one line.

A hostile checkpoint carries an object whose ``__reduce__`` calls ``open(marker, "w")``: unpickling it in full would
create the marker file. Every reader (predictor, training resume, pretrained weights, the ``nnreg_predict`` CLI) must
refuse it without creating the marker; nnreg's own checkpoint writer must store only what the safe reader accepts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nnreg.cli.predict import main as predict_main
from nnreg.inference.model_folder import load_checkpoint
from nnreg.networks import default_architecture
from nnreg.training.checkpoint import load_checkpoint as load_training_checkpoint
from nnreg.training.checkpoint import save_checkpoint
from nnreg.training.pretrained import read_pretrained_state
from nnreg.utilities.errors import NnregError
from tests.inference.helpers import invoke_cli, one_line_error, planned_dataset, write_model_folder


class Payload:
    """Unpickled in full, this creates ``marker``: stands in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def hostile_checkpoint(path: Path, marker: Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """An nnreg-shaped checkpoint (valid weights, init_args) with a payload hidden in its logging state."""
    torch.save({"format_version": 1, "network_weights": weights or {"w": torch.zeros(2)}, "trainer_name": "x",
                "optimizer_state": {}, "current_epoch": 1, "init_args": {"configuration": "3d_fullres"},
                "logging": {"train_loss": [Payload(marker)]}}, path)
    return path


def test_predictor_refuses_a_checkpoint_holding_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "checkpoint_final.pth", marker)
    with pytest.raises(NnregError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "refused" in message and "io.open" in message
    assert not marker.exists()


@pytest.mark.parametrize("reader", [load_training_checkpoint, read_pretrained_state])
def test_training_readers_refuse_a_checkpoint_holding_code(tmp_path: Path, reader: Any) -> None:
    """Resume (``--c``) and ``-pretrained_weights`` read with weights_only already; the error now says why."""
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "checkpoint_latest.pth", marker)
    with pytest.raises(NnregError, match="refused"):
        reader(path)
    assert not marker.exists()


def test_nnreg_predict_refuses_a_model_holding_code(tmp_path: Path) -> None:
    root, plans = planned_dataset(tmp_path, n_train=5, n_val=2)
    folder = write_model_folder(tmp_path / "results", plans, "3d_fullres",
                                architecture=default_architecture(2, base_channels=8))
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    weights = torch.load(checkpoint, weights_only=True)["network_weights"]
    marker = tmp_path / "ran"
    hostile_checkpoint(checkpoint, marker, weights)
    result = invoke_cli(predict_main, "-i", root, "-o", tmp_path / "out", "-m", folder, "-c", "3d_fullres",
                        "-npp", "0", "-nps", "0")
    one_line_error(result, "checkpoint_final.pth", "refused")
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_nnreg_checkpoints_hold_only_what_the_safe_reader_accepts(tmp_path: Path) -> None:
    """numpy numbers, arrays and paths that reach the checkpoint state are stored as plain values and tensors."""
    state = {"network_weights": {"w": torch.ones(3)}, "optimizer_state": {"state": {}, "param_groups": []},
             "current_epoch": np.int64(4), "init_args": {"fold": "0", "output": Path("/x/y")},
             "trainer_name": "nnRegTrainer", "best_metric": np.float32(0.25),
             "logging": {"val_ncc": [np.float64(0.5), None], "keys": np.arange(3)}, "guard": {"on": np.bool_(True)}}
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint(state, path)
    loaded = load_training_checkpoint(path)
    assert type(loaded["current_epoch"]) is int and loaded["current_epoch"] == 4
    assert type(loaded["best_metric"]) is float and loaded["best_metric"] == 0.25
    assert loaded["logging"]["val_ncc"] == [0.5, None] and loaded["init_args"]["output"] == "/x/y"
    assert torch.equal(loaded["logging"]["keys"], torch.arange(3)) and loaded["guard"]["on"] is True
    assert load_checkpoint(path)["network_weights"]["w"].sum() == 3


def test_checkpoint_writer_refuses_objects_it_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="logging.train_loss"):
        save_checkpoint({"network_weights": {}, "logging": {"train_loss": [object()]}}, tmp_path / "c.pth")
    assert not list(tmp_path.iterdir())


def test_older_checkpoints_with_numpy_numbers_still_load(tmp_path: Path) -> None:
    """numpy numbers are rebuilt from bytes (data, not code): checkpoints of older nnreg versions stay readable."""
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "logging": {"val_ncc": [np.float64(0.5), np.float32(1)]},
                "current_epoch": np.int64(3)}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["logging"]["val_ncc"] == [0.5, 1.0] and checkpoint["current_epoch"] == 3
