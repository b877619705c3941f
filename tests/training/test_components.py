"""Unit tests of the trainer's parts: pair sampling, augmentation, hyperparameters, schedule, log, checkpoints,
trainer lookup and the loader's handling of failing workers."""
from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nnreg.training.checkpoint import (CheckpointError, capture_rng_state, clean_state_dict, load_checkpoint,
                                       restore_rng_state, save_checkpoint)
from nnreg.training.data import DataLoaderWorkerError, PairLoader, PairSampler, ordered_pairs
from nnreg.training.data.augmentation import IntensityAugmenter
from nnreg.training.find_trainer import find_trainer
from nnreg.training.hyperparameters import TrainingHyperparameters
from nnreg.training.logger import TrainingLog
from nnreg.training.schedule import poly_lr
from nnreg.training.trainer import nnRegTrainer
from nnreg.utilities.errors import ConfigurationError

CASES = [f"C{i}" for i in range(5)]


def test_pair_sampler_is_a_function_of_seed_rank_and_index() -> None:
    sampler = PairSampler(CASES, seed=3, rank=0)
    pairs = [sampler(k) for k in range(400)]
    assert all(p.fixed != p.moving for p in pairs)
    counts = Counter((p.fixed, p.moving) for p in pairs)
    assert len(counts) == 20                                  # every ordered pair, both directions, appears
    assert max(counts.values()) < 3 * min(counts.values())
    assert [PairSampler(CASES, 3, 0)(k) for k in (7, 399, 0)] == [pairs[7], pairs[399], pairs[0]]
    other_rank = [PairSampler(CASES, 3, 1)(k) for k in range(50)]
    assert [(p.fixed, p.moving) for p in other_rank] != [(p.fixed, p.moving) for p in pairs[:50]]
    with pytest.raises(ValueError):
        PairSampler(["only"], seed=0)


def test_ordered_pairs_all_or_a_reproducible_subset() -> None:
    assert ordered_pairs(["b", "a", "c"]) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    subset = ordered_pairs(CASES, limit=7, seed=1)
    assert len(subset) == 7 and subset == ordered_pairs(CASES, limit=7, seed=1)
    assert set(subset) <= set(ordered_pairs(CASES))


def test_augmentation_depends_on_the_seed_only() -> None:
    image = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    augment = IntensityAugmenter()
    outputs = []
    for seed in range(30):
        np.random.seed(seed * 11)                             # the global generators must not matter ...
        random.seed(seed * 13)
        outputs.append(augment(image, seed))
    np.random.seed(999)
    random.seed(999)
    state, python_state = np.random.get_state()[1].copy(), random.getstate()
    assert all(np.array_equal(augment(image, s), outputs[s]) for s in range(30))
    assert np.array_equal(np.random.get_state()[1], state)   # ... and are left as they were
    assert random.getstate() == python_state
    assert any(not np.allclose(o, image) for o in outputs)   # something is augmented at these probabilities


def test_hyperparameters_overrides_json_and_validation() -> None:
    hp = TrainingHyperparameters().with_overrides({"lr": 1e-3, "lambda_reg": 2.0})
    assert (hp.lr, hp.lambda_reg, hp.ncc_window, hp.poly_exponent) == (1e-3, 2.0, 9, 0.9)
    assert TrainingHyperparameters.from_json(hp.to_json()) == hp
    with pytest.raises(ConfigurationError, match="unknown hyperparameter"):
        hp.with_overrides({"learning_rate": 1.0})
    with pytest.raises(ConfigurationError, match="odd"):
        TrainingHyperparameters(ncc_window=8)


def test_poly_schedule() -> None:
    assert poly_lr(4e-4, 0, 100) == 4e-4
    assert poly_lr(4e-4, 50, 100, 0.9) == pytest.approx(4e-4 * 0.5 ** 0.9)
    assert poly_lr(4e-4, 100, 100) == 0.0


def test_training_log_line_and_moving_average() -> None:
    log = TrainingLog()
    for epoch, (loss, dice) in enumerate([(-0.5, 0.6), (-0.6, 0.7)]):
        for key, value in (("train_loss", loss), ("val_ncc", 0.3), ("val_dice", dice), ("val_ndv", 0.0),
                           ("lr", 4e-4), ("epoch_time", 12.0)):
            log.log(key, value, epoch)
        log.update_ema(epoch, dice, alpha=0.9)
    assert log.values["ema_metric"] == [0.6, pytest.approx(0.9 * 0.6 + 0.1 * 0.7)]
    line = log.summary_line(1, 10)
    assert line.startswith("epoch 2/10") and "val Dice 0.7000" in line and "NDV 0.0000 %" in line
    assert "lr 4.00e-04" in line and "12.0 s" in line
    assert TrainingLog.from_json(log.to_json()).values == log.values


def test_checkpoint_round_trip_rng_and_prefixes(tmp_path: Path) -> None:
    weights = {"module._orig_mod.conv.weight": torch.randn(2, 2), "module.bias": torch.zeros(2)}
    assert set(clean_state_dict(weights)) == {"conv.weight", "bias"}
    torch.manual_seed(5)
    np.random.seed(5)
    state = capture_rng_state(sampler_position=42)
    expected = (torch.rand(3), np.random.rand(3))
    save_checkpoint({"network_weights": clean_state_dict(weights), "optimizer_state": {}, "current_epoch": 1,
                     "logging": {}, "init_args": {}, "trainer_name": "nnRegTrainer", "rng_state": state},
                    tmp_path / "c.pth")
    loaded = load_checkpoint(tmp_path / "c.pth")          # weights_only=True inside
    restore_rng_state(loaded["rng_state"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert loaded["rng_state"]["sampler_position"] == 42
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        load_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


class MyTrainer(nnRegTrainer):
    """A user's trainer (defined in a test module)."""


def test_find_trainer_by_name_module_and_file(tmp_path: Path) -> None:
    assert find_trainer("nnRegTrainer") is nnRegTrainer
    assert find_trainer("tests.training.test_components.MyTrainer") is MyTrainer
    assert find_trainer("tests.training.test_components:MyTrainer") is MyTrainer
    user_file = tmp_path / "my_trainers.py"
    user_file.write_text("from nnreg.training import nnRegTrainer\nclass Custom(nnRegTrainer):\n    pass\n"
                         "class NotATrainer:\n    pass\n")
    assert find_trainer(f"{user_file}:Custom").__name__ == "Custom"
    with pytest.raises(ConfigurationError, match="not a subclass"):
        find_trainer(f"{user_file}:NotATrainer")
    with pytest.raises(ConfigurationError, match="unknown trainer"):
        find_trainer("NoSuchTrainer")
    with pytest.raises(ConfigurationError, match="cannot import"):
        find_trainer("no_such_package.Trainer")


class _FailingDataset(torch.utils.data.Dataset):
    """Raises (``mode="raise"``) or kills its worker process (``mode="die"``) at index 3."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int) -> dict:
        if index == 3:
            if self.mode == "die":
                os._exit(7)
            from nnreg.training.data.dataset import SampleLoadingError
            raise SampleLoadingError(f"could not read case_{index}.b2nd: broken file")
        return {"fixed": torch.zeros(1, 2, 2, 2), "moving": torch.zeros(1, 2, 2, 2), "index": index}


@pytest.mark.parametrize("workers", [0, 1])
def test_a_failing_sample_reaches_the_user_with_its_traceback(workers: int) -> None:
    loader = PairLoader(_FailingDataset("raise"), 1, 0, 10, workers, torch.device("cpu"))
    for _ in range(3):
        loader.next_batch()
    with pytest.raises(DataLoaderWorkerError) as info:
        loader.next_batch()
    text = str(info.value)
    assert "case_3.b2nd: broken file" in text
    if workers:
        assert "worker process 0" in text and "Traceback" in text and "__getitem__" in text


def test_a_worker_that_dies_is_named_with_a_hint() -> None:
    loader = PairLoader(_FailingDataset("die"), 1, 0, 10, 1, torch.device("cpu"))
    with pytest.raises(DataLoaderWorkerError, match="--num-workers 0"):
        for _ in range(5):
            loader.next_batch()


def test_a_broken_preprocessed_file_shows_the_worker_traceback(train_env: dict[str, Path]) -> None:
    from nnreg.training.data import PairDataset

    folder = train_env["preprocessed"] / "Dataset901_Tiny" / "nnRegPlans_3d_fullres"
    cases = sorted(p.stem for p in folder.glob("*.json"))
    (folder / f"{cases[1]}.b2nd").write_bytes(b"\x00" * 64)
    loader = PairLoader(PairDataset(folder, PairSampler(cases[:2], seed=0)), 1, 0, 4, 1, torch.device("cpu"))
    with pytest.raises(DataLoaderWorkerError) as info:
        loader.next_batch()
    text = str(info.value)
    assert cases[1] in text and "data-loader worker 0" in text and "Traceback" in text


def test_continue_picks_the_newer_of_final_and_latest(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from nnreg.training.run import _checkpoint_to_continue

    workspace = SimpleNamespace(fold_folder=tmp_path)
    with pytest.raises(ConfigurationError, match="no checkpoint to continue"):
        _checkpoint_to_continue(workspace)
    (tmp_path / "checkpoint_best.pth").write_bytes(b"b")
    assert _checkpoint_to_continue(workspace).name == "checkpoint_best.pth"
    for name, when in (("checkpoint_final.pth", 1_000), ("checkpoint_latest.pth", 2_000)):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (when, when))
    assert _checkpoint_to_continue(workspace).name == "checkpoint_latest.pth"   # extended run stopped again
    os.utime(tmp_path / "checkpoint_final.pth", (3_000, 3_000))
    assert _checkpoint_to_continue(workspace).name == "checkpoint_final.pth"    # finished run
