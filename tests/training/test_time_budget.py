"""``--time-budget``: the schedule fitted to the wall time (pure rules), the trainer's measurement, the CLI run
and its continuation, with fixed (fake) timings so nothing depends on this machine's speed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nnreg.cli.train import main
from nnreg.training import budget
from nnreg.training.budget import MIN_EPOCHS, Timing, extend_schedule, fit_schedule, refit_epochs
from tests.training.conftest import fold_folder

ARGS = ["--device", "cpu", "--val-pairs", "1", "--num-workers", "0", "--ncc-window", "5", "--no-final-validation"]


@pytest.mark.parametrize("minutes, step, validation, final", [(30, 3.6, 12.0, 60.0), (30, 0.2, 1.0, 20.0),
                                                              (600, 1.0, 5.0, 30.0), (2, 4.0, 10.0, 10.0)])
def test_schedule_fills_the_budget_without_exceeding_it(minutes: float, step: float, validation: float,
                                                        final: float) -> None:
    budget_s = minutes * 60
    s = fit_schedule(budget_s, 15.0, step, validation, final, max_iterations=250)
    assert 1 <= s.iterations_per_epoch <= 250 and s.epochs >= 1
    assert s.predicted_seconds <= budget_s + 1e-6
    # not much is left over: one more epoch would not fit
    assert s.predicted_seconds + s.epoch_seconds > budget_s
    if s.iterations_per_epoch < 250:          # iterations were cut to keep enough epochs for the decay
        assert s.epochs >= MIN_EPOCHS or s.epochs == 1 or s.iterations_per_epoch * step >= 9 * validation * 0.999
    assert f"{s.epochs} epochs x {s.iterations_per_epoch} iterations" in s.describe()


def test_schedule_examples() -> None:
    # 30 min on a CPU, 3.6 s per step, 12 s validation, 60 s final: 1725 s left, 10 epochs of 44 steps
    s = fit_schedule(1800, 15, 3.6, 12, 60, 250)
    assert (s.epochs, s.iterations_per_epoch) == (10, 44)
    # a long budget keeps the configured iterations and adds epochs
    s = fit_schedule(24 * 3600, 15, 1.0, 5, 30, 250)
    assert (s.iterations_per_epoch, s.epochs) == (250, (24 * 3600 - 45) // 255)
    # validation never takes more than 10 % of an epoch: 180 steps per 20 s validation, so only 2 epochs
    s = fit_schedule(600, 10, 1.0, 20.0, 0, 250)
    assert (s.epochs, s.iterations_per_epoch) == (2, 180)
    # a budget below one such epoch still gives one, shortened to what is left: (15 - 2) // 1 = 13 steps
    s = fit_schedule(20, 5, 1.0, 2.0, 0, 250)
    assert (s.epochs, s.iterations_per_epoch) == (1, 13)


def test_continued_schedule_keeps_iterations_and_counts_the_time_trained() -> None:
    s = extend_schedule(600, 310, trained_epochs=5, epoch_seconds=60, iterations=20, validation_seconds=4,
                        final_seconds=50)
    assert (s.epochs, s.iterations_per_epoch) == (5 + 4, 20)     # (600 - 310 - 50) // 60 = 4 more
    assert "continuing: 4 more after epoch 5" in s.describe()
    spent = extend_schedule(600, 700, 5, 60, 20, 4, 50)
    assert spent.epochs == 6                                     # the epoch being started always runs


def test_refit_follows_the_measured_speed_in_the_first_half_only() -> None:
    # 10 epochs planned for 1800 s; after 2 epochs of 100 s (300 s elapsed, 100 s final): 14 more fit
    assert refit_epochs(1800, 300, 2, 10, 100, 100) == 2 + 14
    assert refit_epochs(1800, 300, 2, 10, 200, 100) == 2 + 7           # slower than planned: fewer epochs
    assert refit_epochs(1800, 1900, 2, 10, 200, 100) == 3              # over budget: the next epoch still runs
    assert refit_epochs(1800, 300, 6, 10, 10, 100) == 10               # second half: the decay ends as planned
    assert refit_epochs(1800, 300, 0, 10, 10, 100) == 10 and refit_epochs(1800, 300, 2, 10, 0, 100) == 10


def test_progress_leaves_out_the_first_epoch_once_there_are_more() -> None:
    import time
    from types import SimpleNamespace

    from nnreg.training.distributed import DistributedContext

    trainer = SimpleNamespace(log=SimpleNamespace(values={"epoch_time": [90.0, 60.0, 62.0]}),
                              context=DistributedContext(), device=torch.device("cpu"),
                              budget_clock=time.monotonic() - 300.0)
    schedule = fit_schedule(1800, 15, 1.0, 5, 30, 50)
    elapsed, epoch = budget.measure_progress(trainer, schedule)
    assert epoch == pytest.approx(61.0) and elapsed == pytest.approx(300.0, abs=5.0)
    trainer.log.values["epoch_time"] = [90.0]
    assert budget.measure_progress(trainer, schedule)[1] == pytest.approx(90.0)


def test_a_faster_run_than_calibrated_gets_more_epochs(train_env: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # calibrated at 1 s per step (3 epochs of 2 steps in 0.3 min), but epochs take 2 s: after epoch 1
    # (5 s elapsed) (18 - 5) // 2 = 6 more -> 7 epochs; after epoch 2 of 7 (7 s): 2 + 5 = 7 again; then fixed
    final, log, _ = _budget_run(train_env, monkeypatch, epoch_seconds=2.0)
    assert final["current_epoch"] == 7 and final["init_args"]["hyperparameters"]["epochs"] == 7
    assert "time budget: 7 epochs instead of 3" in log and "epoch 7/7" in log


def test_the_final_validation_is_estimated_at_full_size() -> None:
    """A 1 mm dataset's 3d_halfres trains on a 2 mm grid, but its final validation runs at 1 mm: 8x the voxels."""
    from nnreg.planning.plans import ConfigurationPlan

    def config(factor: float, shape: list[int]) -> ConfigurationPlan:
        return ConfigurationPlan(data_identifier="t", spacing=[factor] * 3, resampling_factor=[factor] * 3,
                                 resampled_shape=shape, crop_start=[0, 0, 0], shape=shape, normalization={},
                                 batch_size=1, architecture={})

    assert budget.full_size_factor(config(2.0, [80, 112, 96])) == pytest.approx(8.0)
    assert budget.full_size_factor(config(1.0, [80, 112, 96])) == pytest.approx(1.0)
    assert budget.full_size_factor(config(0.5, [80, 112, 96])) == 1.0          # never below an epoch pair
    one = budget.final_validation_seconds(12, 2.0)
    halfres = budget.final_validation_seconds(12, 2.0, budget.full_size_factor(config(2.0, [80, 112, 96])))
    assert halfres - budget.FINAL_OVERHEAD_SECONDS == pytest.approx(8 * (one - budget.FINAL_OVERHEAD_SECONDS))


def test_the_trainer_measures_real_steps_and_validation(train_env: dict[str, Path]) -> None:
    """The calibration steps are real training steps: logged, and the data position advances."""
    from nnreg.training.hyperparameters import TrainingHyperparameters
    from nnreg.training.run import prepare_job
    from nnreg.training.find_trainer import find_trainer

    job = prepare_job("901", "0", overrides={"val_pairs": 1, "num_workers": 0, "ncc_window": 5,
                                             "time_budget_minutes": 1.0})
    assert isinstance(job.hyperparameters, TrainingHyperparameters)
    trainer = find_trainer("nnRegTrainer")(job.workspace, job.hyperparameters, torch.device("cpu"))
    trainer.on_train_start()
    trainer.network.train()
    timing = budget.measure_trainer(trainer)
    trainer.loader.close()
    batch = trainer.configuration.batch_size
    assert trainer.sample_position == (1 + budget.CALIBRATION_STEPS) * batch
    assert len(trainer._train_outputs) == 1 + budget.CALIBRATION_STEPS
    assert timing.step_seconds > 0 and timing.validation_seconds > 0 and timing.epoch_seconds == 0
    assert timing.final_validation_seconds > budget.FINAL_OVERHEAD_SECONDS
    assert timing.spent_seconds >= budget.CALIBRATION_STEPS * timing.step_seconds


def _fake(timing: Timing):
    calls = []

    def measure(trainer):   # noqa: ANN001, ANN202 - stands in for budget.measure_trainer
        calls.append(trainer.current_epoch)
        return timing
    return measure, calls


def _budget_run(train_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, epoch_seconds: float):
    """``nnreg_train --time-budget 0.3`` (18 s) calibrated at 3 s spent, 1 s per step, 2 s validation (3 epochs of
    2 steps), whose epochs then take ``epoch_seconds``: (final checkpoint, training log, calibration calls)."""
    measure, calls = _fake(Timing(3.0, 1.0, 0.0, 2.0, 0.0))
    monkeypatch.setattr(budget, "measure_trainer", measure)
    monkeypatch.setattr(budget, "measure_progress",
                        lambda trainer, schedule: (3.0 + epoch_seconds * trainer.current_epoch, epoch_seconds))
    result = CliRunner().invoke(main, ["901", "0", "--time-budget", "0.3", "--iterations-per-epoch", "2", *ARGS])
    assert result.exit_code == 0, result.output
    fold = fold_folder(train_env)
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    return final, next(fold.glob("training_log_*.txt")).read_text(), calls


def test_cli_run_follows_the_fitted_schedule_and_logs_it(train_env: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.3 minutes, 3 s spent, 1 s per step, 2 s validation, at most 2 iterations: (18 - 3) // (2 + 2) = 3 epochs
    # the refit after each epoch sees the same speed (4 s per epoch after the 3 s spent): nothing to change
    checkpoint, log, calls = _budget_run(train_env, monkeypatch, epoch_seconds=4.0)
    hp = checkpoint["init_args"]["hyperparameters"]
    assert (hp["epochs"], hp["iterations_per_epoch"], hp["time_budget_minutes"]) == (3, 2, 0.3)
    assert checkpoint["current_epoch"] == 3 and len(checkpoint["logging"]["lr"]) == 3
    lr = checkpoint["logging"]["lr"]
    assert lr[-1] == pytest.approx(lr[0] * (1 - 2 / 3) ** 0.9)          # the decay fitted to 3 epochs
    assert "time budget 0.3 min: 3 epochs x 2 iterations" in log and "epoch 3/3" in log
    assert calls == [0]


def test_continue_extends_an_unfinished_run(train_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after 2 of 200 epochs, continued with a 0.5-minute budget: (30 - 10) // 10 = 2 more epochs."""
    result = CliRunner().invoke(main, ["901", "0", "--epochs", "2", "--iterations-per-epoch", "2", *ARGS])
    assert result.exit_code == 0, result.output
    fold = fold_folder(train_env)
    state = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    state["init_args"]["hyperparameters"]["epochs"] = 200          # as if it had been stopped at epoch 2 of 200
    (fold / "checkpoint_final.pth").unlink()
    torch.save(state, fold / "checkpoint_latest.pth")
    measure, calls = _fake(Timing(10.0, 0.0, 10.0, 2.0, 0.0))
    monkeypatch.setattr(budget, "measure_trainer", measure)
    result = CliRunner().invoke(main, ["901", "0", "--c", "--time-budget", "0.5", *ARGS])
    assert result.exit_code == 0, result.output
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    hp = final["init_args"]["hyperparameters"]
    assert (final["current_epoch"], hp["epochs"], hp["iterations_per_epoch"]) == (4, 4, 2)
    assert calls == [2]
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "continuing: 2 more after epoch 2" in logs
    lr = final["logging"]["lr"]
    assert lr[2] == pytest.approx(lr[0] * (1 - 2 / 4) ** 0.9)           # the decay follows the new length


def test_time_budget_and_epochs_are_exclusive(train_env: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["901", "0", "--time-budget", "5", "--epochs", "3", *ARGS])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--time-budget" in lines[0] and "--epochs" in lines[0]
