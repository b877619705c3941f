"""DDP with gloo (2 CPU processes) and deterministic resume equality, on tiny data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnreg.training import run_training
from nnreg.training.trainer import nnRegTrainer
from tests.training.conftest import FAST, TINY_BATCH, fold_folder


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["network_weights"]


def test_ddp_two_gloo_processes_keep_identical_weights_and_only_rank0_writes(
        train_env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("NNREG_TEST_PROBE", str(probe))
    overrides = {**FAST, "epochs": 1, "iterations_per_epoch": 3, "final_validation": False}
    run_training("901", "0", trainer="tests.training.ddp_probe:ProbeTrainer", device="cpu", num_gpus=2,
                 overrides=overrides)
    w0, w1 = torch.load(probe / "rank0.pt"), torch.load(probe / "rank1.pt")
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    saved = _weights(fold_folder(train_env, trainer="ProbeTrainer") / "checkpoint_final.pth")
    assert all(torch.equal(saved[k], w0[k]) for k in w0)
    rank0, rank1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["writes"] == []
    assert any(p.endswith(".pth") for p in rank0["writes"]) and any("training_log_" in p for p in rank0["writes"])
    assert rank0["position"] == rank1["position"] == 3 * TINY_BATCH        # samples drawn per rank


class _Stop(Exception):
    pass


def test_deterministic_resume_equals_uninterrupted(train_env: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {**FAST, "epochs": 4, "deterministic": True, "seed": 7, "final_validation": False, "val_pairs": 0,
                 "iterations_per_epoch": 1}
    run_training("901", "0", device="cpu", overrides=overrides)
    fold = fold_folder(train_env)
    uninterrupted = _weights(fold / "checkpoint_final.pth")
    curve = torch.load(fold / "checkpoint_final.pth", weights_only=True)["logging"]["train_loss"]
    for path in fold.glob("checkpoint_*.pth"):
        path.unlink()

    original = nnRegTrainer.on_epoch_end

    def stop_after_two(self: nnRegTrainer, val: dict) -> None:
        original(self, val)
        if self.current_epoch == 2:
            raise _Stop()

    monkeypatch.setattr(nnRegTrainer, "on_epoch_end", stop_after_two)
    with pytest.raises(_Stop):
        run_training("901", "0", device="cpu", overrides=overrides)
    monkeypatch.setattr(nnRegTrainer, "on_epoch_end", original)
    assert not (fold / "checkpoint_final.pth").exists()
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=True)["current_epoch"] == 2
    after_two = _weights(fold / "checkpoint_latest.pth")

    # continue with a data worker process: the pair stream does not depend on the number of workers
    run_training("901", "0", device="cpu", continue_training=True, overrides={"num_workers": 1})
    resumed = _weights(fold / "checkpoint_final.pth")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert torch.load(fold / "checkpoint_final.pth", weights_only=True)["logging"]["train_loss"] == curve
    assert not all(torch.equal(after_two[k], resumed[k]) for k in resumed)     # epochs 3-4 did train
