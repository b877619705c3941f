"""The divergence guard: skipped non-finite/spiking steps, restore of the last good state with a lower learning
rate on a validation collapse, the final-validation warning, and ``--c`` with changed options."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nnreg.cli.train import main
from nnreg.training.final_validation import worse_than_zero_displacement
from nnreg.training.guard import DivergenceGuard, GuardSettings, TrainingDivergedError
from nnreg.training.trainer import nnRegTrainer
from tests.training.conftest import fold_folder

ARGS = ["--device", "cpu", "--val-pairs", "2", "--num-workers", "0", "--ncc-window", "5",
        "--checkpoint-every", "1", "--no-final-validation"]


def test_step_checks_non_finite_and_spikes() -> None:
    guard = DivergenceGuard(GuardSettings(spike_warmup=5, max_consecutive_skips=3))
    assert guard.check_step(float("nan"), 1.0).apply is False
    assert guard.check_step(-0.5, float("inf")).apply is False
    for k in range(10):
        assert guard.check_step(-0.5 - 0.001 * k, 1.0).apply
    assert guard.consecutive_skips == 0
    assert guard.check_step(-0.49, 1.0).apply                       # normal noise is no spike
    verdicts = [guard.check_step(3.0, 1.0) for _ in range(3)]        # far above the recent median
    assert [v.apply for v in verdicts] == [False, False, False]
    assert "spike" in verdicts[0].reason
    assert [v.restore for v in verdicts] == [False, False, True]
    assert guard.skipped_steps == 5


def test_collapse_restores_the_last_good_state_and_halves_the_rate() -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    guard = DivergenceGuard(GuardSettings(max_restores=2))
    guard.zero_displacement_ncc = 0.2
    assert not guard.validation_collapsed(0.15) and not guard.validation_collapsed(None)
    assert guard.validation_collapsed(0.05) and guard.validation_collapsed(float("nan"))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    guard.remember(0, net, opt)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert not torch.equal(net.weight, good["weight"])
    guard.restore(net, opt, "test collapse")
    assert torch.equal(net.weight, good["weight"]) and guard.lr_multiplier == 0.5
    guard.restore(net, opt, "test collapse")
    assert guard.lr_multiplier == 0.25
    with pytest.raises(TrainingDivergedError, match="smaller --lr"):
        guard.restore(net, opt, "test collapse")
    state = guard.to_json()
    again = DivergenceGuard()
    again.load_json(state)
    assert again.lr_multiplier == 0.25 and again.restores == 3 and again.zero_displacement_ncc == 0.2


class _NanOnThirdStep(nnRegTrainer):
    """Produces a non-finite loss on its third step."""

    steps = 0

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        type(self).steps += 1
        if type(self).steps == 3:
            original = self.loss

            def poisoned(*args: object) -> tuple[torch.Tensor, dict[str, float]]:
                total, parts = original(*args)
                return total * float("nan"), parts

            self.loss = poisoned
            try:
                return super().train_step(batch)
            finally:
                self.loss = original
        return super().train_step(batch)


def test_a_nan_step_is_skipped_and_training_finishes(train_env: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "nan_trainer.py"
    source.write_text("from tests.training.test_guard import _NanOnThirdStep as NanTrainer\n")
    result = CliRunner().invoke(main, ["901", "0", "-tr", f"{source}:NanTrainer", "--epochs", "2",
                                       "--iterations-per-epoch", "3", *ARGS])
    assert result.exit_code == 0, result.output
    fold = fold_folder(train_env, trainer="_NanOnThirdStep")
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["guard"]["skipped_steps"] == 1
    assert all(math.isfinite(v) for v in checkpoint["logging"]["train_loss"])
    assert all(torch.isfinite(w).all() for w in checkpoint["network_weights"].values() if w.is_floating_point())
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "skipped an optimiser step: non-finite loss" in log


def test_continue_with_other_iterations_epochs_and_lr(train_env: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["901", "0", "--epochs", "2", "--iterations-per-epoch", "4", *ARGS])
    assert result.exit_code == 0, result.output
    # more epochs, fewer iterations per epoch than the original schedule: continues (was 'ran out of samples')
    result = CliRunner().invoke(main, ["901", "0", "--c", "--epochs", "3", "--iterations-per-epoch", "1",
                                       "--lr", "1e-4", *ARGS])
    assert result.exit_code == 0, result.output
    fold = fold_folder(train_env)
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["current_epoch"] == 3
    hp = checkpoint["init_args"]["hyperparameters"]
    assert hp["iterations_per_epoch"] == 1 and hp["lr"] == 1e-4
    assert checkpoint["rng_state"]["sampler_position"] == (2 * 4 + 1) * 2      # batch 2 per step
    # fewer epochs than already trained: one line naming the option
    result = CliRunner().invoke(main, ["901", "0", "--c", "--epochs", "2", *ARGS])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.startswith("nnreg: error")]
    assert len(lines) == 1 and "--epochs 2" in lines[0] and "3 epochs already trained" in lines[0], result.output


def test_final_validation_worse_than_zero_displacement_is_a_warning() -> None:
    mean = {"dice": 0.40, "dice_zero_displacement": 0.55, "hd95": 2.0, "hd95_zero_displacement": 2.8,
            "tre": 1.9, "tre_zero_displacement": 1.6}
    warnings = worse_than_zero_displacement(mean)
    assert len(warnings) == 2
    assert warnings[0].startswith("dice 0.4000 is worse than zero displacement (0.5500)")
    assert warnings[1].startswith("tre 1.9000")
    assert worse_than_zero_displacement({"dice": 0.6, "dice_zero_displacement": 0.55}) == []
    json.dumps(warnings)


@pytest.mark.parametrize("seed", [1, 2])
def test_short_training_lowers_the_loss_and_beats_zero_displacement_ncc(train_env: dict[str, Path],
                                                                         seed: int) -> None:
    """The reproduction of issue 11 at tiny size: a short run from scratch, several seeds, never collapses."""
    result = CliRunner().invoke(main, ["901", "0", "--epochs", "3", "--iterations-per-epoch", "6", "--seed",
                                       str(seed), "--deterministic", "--device", "cpu", "--val-pairs", "2",
                                       "--num-workers", "0", "--ncc-window", "5", "--checkpoint-every", "3",
                                       "--no-final-validation"])
    assert result.exit_code == 0, result.output
    fold = fold_folder(train_env)
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    losses = checkpoint["logging"]["train_loss"]
    assert losses[-1] < losses[0]
    guard = checkpoint["guard"]
    assert guard["skipped_steps"] == 0 and guard["restores"] == 0
    val_ncc = checkpoint["logging"]["val_ncc"]
    assert val_ncc[-1] > guard["zero_displacement_ncc"] > 0


def _adam_after_steps(steps: int = 2) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        _adam_step(net, opt)
    return net, opt


def _adam_step(net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    net(torch.ones(4, 3)).square().sum().backward()
    opt.step()


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _state_copy(opt: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state_dict()["state"].items()}


def test_snapshot_is_a_cpu_copy_taken_without_deep_copying_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: the Adam state was deep-copied on its own device (the GPU) every epoch, then moved to the CPU."""
    net, opt = _adam_after_steps()
    deep_copied: list[str] = []
    original_deepcopy = copy.deepcopy

    def spy(obj: object, *args: object) -> object:
        if _tensors(obj):
            deep_copied.append(type(obj).__name__)
        return original_deepcopy(obj, *args)

    monkeypatch.setattr(copy, "deepcopy", spy)
    guard = DivergenceGuard()
    guard.remember(0, net, opt)
    monkeypatch.undo()
    assert not deep_copied, f"remember deep-copied tensors on their device: {deep_copied}"
    snapshot = guard._good_state
    assert snapshot is not None
    saved = _tensors(snapshot)
    live = _tensors(opt.state_dict()) + _tensors(net.state_dict())
    assert len(saved) == len(live) and all(t.device.type == "cpu" for t in saved)
    live_storages = {t.untyped_storage().data_ptr() for t in live}
    assert not any(t.untyped_storage().data_ptr() in live_storages for t in saved)   # copies, not views
    want = _state_copy(opt)
    _adam_step(net, opt)                             # the live state moves on, the snapshot does not
    for key, entries in want.items():
        for name, value in entries.items():
            assert torch.equal(snapshot["optimizer"]["state"][key][name], value)


def test_restoring_twice_gives_the_remembered_state_both_times() -> None:
    """A restore must not hand the snapshot's own tensors to the optimiser: Adam updates its state in place, so the
    next step would change the snapshot and a second restore (skips, then a collapse) would not go back."""
    net, opt = _adam_after_steps()
    guard = DivergenceGuard(GuardSettings(max_restores=3))
    guard.remember(0, net, opt)
    want_state = _state_copy(opt)
    want_weight = net.weight.detach().clone()
    for _ in range(2):
        _adam_step(net, opt)
        _adam_step(net, opt)
        assert not torch.equal(net.weight, want_weight)
        guard.restore(net, opt, "test")
        assert torch.equal(net.weight, want_weight)
        got = opt.state_dict()["state"]
        for key, entries in want_state.items():
            for name, value in entries.items():
                assert torch.equal(got[key][name], value), (key, name)
                assert got[key][name].device == net.weight.device
    _adam_step(net, opt)                               # training goes on from the restored state


def test_no_snapshot_once_no_restore_is_left() -> None:
    net, opt = _adam_after_steps()
    guard = DivergenceGuard(GuardSettings(max_restores=1))
    guard.remember(0, net, opt)
    guard.restore(net, opt, "test")
    snapshot = guard._good_state
    guard.remember(1, net, opt)                        # a further restore raises: nothing to keep
    assert guard._good_state is snapshot and guard._good_epoch == 0
    with pytest.raises(TrainingDivergedError):
        guard.restore(net, opt, "test")
