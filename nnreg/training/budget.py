"""Fit the training schedule to a wall-time budget (``nnreg_train ... --time-budget MINUTES``).

Why: on a CPU the default 200 x 250 steps take days, and a run killed by the clock has an unfinished learning-rate
decay and no final validation. With a budget the trainer measures its own speed and chooses epochs x iterations
so that training, the per-epoch validation and the final validation end within the time given, with the poly
decay reaching zero at the last epoch.

Time model (seconds; all measured in this process except the final validation, which is estimated):

    budget = spent (setup and calibration, measured)
             + epochs x (iterations x step + validation)
             + final validation (pairs x FINAL_PAIR_FACTOR x full-size factor x one validation pair)

``step`` is the mean of :data:`CALIBRATION_STEPS` real training steps after one warm-up step (they train the
network and count towards the spent time), ``validation`` the time of one validation pair times the pairs
validated per epoch. The final validation registers and scores the pairs at the images' full original size, not
on the network grid: the full-size factor (:func:`full_size_factor`) is the ratio of the two grids' voxels, 8 for
a 1 mm dataset's ``3d_halfres`` configuration (a 2 mm network grid). The choice (:func:`fit_schedule`): the configured iterations per epoch if that still leaves
:data:`MIN_EPOCHS` epochs, else fewer iterations (never so few that validation exceeds
:data:`MAX_VALIDATION_SHARE` of an epoch) so that there are ``MIN_EPOCHS`` epochs: enough for the poly decay and the
moving average that picks ``checkpoint_best``.

The first steps are slower than the rest (allocator and caches warming up) and the final validation is an
estimate, so a fresh run refits its number of epochs after each epoch of the first half of the schedule
(:func:`refit_epochs`): from the measured mean epoch time, the epochs that still fit the budget are added or
dropped, iterations per epoch unchanged; in the second half the count stays, so the decay ends as planned.

Continuing (``--c``) keeps the iterations per epoch and the time already trained (the logged epoch times):
the epochs that still fit the budget (at least the one being started), at the measured time per epoch, are
appended to those done, so a run killed and continued with the same budget finishes about as planned, and a
larger budget extends it. A finished run (its last epoch trained) is not extended by ``--c``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnreg.planning.plans import ConfigurationPlan
    from nnreg.training.trainer import nnRegTrainer

CALIBRATION_STEPS = 3           # timed training steps (after one warm-up step)
MIN_EPOCHS = 10                 # fewer iterations per epoch rather than fewer epochs than this
MAX_VALIDATION_SHARE = 0.1      # per-epoch validation at most this share of an epoch (when the budget allows)
FINAL_PAIR_FACTOR = 1.0         # a final-validation pair (full size, predictor, Dice + HD95) vs an epoch pair
#                                 (measured on OpenBrains80, 2 CPU cores: 0.5; 1.0 leaves room for larger grids)
FINAL_OVERHEAD_SECONDS = 10.0   # final validation start-up: predictor, reading the raw images and labels


@dataclass(frozen=True)
class Schedule:
    """What a time budget chose and the numbers it was chosen from (seconds)."""

    epochs: int
    iterations_per_epoch: int
    budget_seconds: float
    spent_seconds: float                 # before ``first_epoch``: set-up, calibration and epochs already trained
    step_seconds: float
    validation_seconds: float
    final_validation_seconds: float
    first_epoch: int = 0                 # epochs already trained (a continued run)

    @property
    def epoch_seconds(self) -> float:
        return self.iterations_per_epoch * self.step_seconds + self.validation_seconds

    @property
    def predicted_seconds(self) -> float:
        """Predicted wall time of the whole run under this schedule."""
        return (self.spent_seconds + self.final_validation_seconds
                + (self.epochs - self.first_epoch) * self.epoch_seconds)

    def describe(self) -> str:
        """The one log line of the choice."""
        head = (f"time budget {self.budget_seconds / 60:g} min: {self.epochs} epochs x {self.iterations_per_epoch} "
                f"iterations")
        if self.first_epoch:
            head += f" (continuing: {max(0, self.epochs - self.first_epoch)} more after epoch {self.first_epoch})"
        return (f"{head}, from {self.step_seconds:.2f} s per step, {self.validation_seconds:.1f} s validation per "
                f"epoch, {self.final_validation_seconds:.0f} s final validation (estimated) and "
                f"{self.spent_seconds:.0f} s already spent; predicted total {self.predicted_seconds / 60:.1f} min")


def full_size_factor(configuration: "ConfigurationPlan") -> float:
    """Voxels of an image at its original size / voxels of the network grid (at least 1): what a full-size
    final-validation pair costs more than an epoch-validation pair on the network grid."""
    original = math.prod(r * f for r, f in zip(configuration.resampled_shape, configuration.resampling_factor))
    return max(1.0, original / max(1, math.prod(configuration.shape)))


def final_validation_seconds(pairs: int, validation_pair_seconds: float, size_factor: float = 1.0) -> float:
    """Estimated seconds of the final validation of ``pairs`` pairs (0 when there are none), each costing
    ``size_factor`` x an epoch-validation pair (:func:`full_size_factor`)."""
    if pairs <= 0:
        return 0.0
    return FINAL_OVERHEAD_SECONDS + pairs * FINAL_PAIR_FACTOR * size_factor * validation_pair_seconds


def fit_schedule(budget_seconds: float, spent_seconds: float, step_seconds: float, validation_seconds: float,
                 final_seconds: float, max_iterations: int, min_epochs: int = MIN_EPOCHS) -> Schedule:
    """Epochs x iterations for a fresh run (module docstring); at least 1 x 1 whatever the budget."""
    step = max(step_seconds, 1e-6)
    available = budget_seconds - spent_seconds - final_seconds

    def epochs_for(iterations: int) -> int:
        return max(1, math.floor(available / (iterations * step + validation_seconds)))

    iterations = max(1, int(max_iterations))
    if epochs_for(iterations) < min_epochs:
        floor = math.ceil(validation_seconds * (1 - MAX_VALIDATION_SHARE) / (MAX_VALIDATION_SHARE * step))
        fitted = math.floor((available / min_epochs - validation_seconds) / step)
        iterations = max(1, min(iterations, max(floor, fitted)))
        if available < iterations * step + validation_seconds:   # not even one epoch of that: one shorter epoch
            iterations = max(1, min(iterations, math.floor((available - validation_seconds) / step)))
    return Schedule(epochs_for(iterations), iterations, budget_seconds, spent_seconds, step_seconds,
                    validation_seconds, final_seconds)


def extend_schedule(budget_seconds: float, spent_seconds: float, trained_epochs: int, epoch_seconds: float,
                    iterations: int, validation_seconds: float, final_seconds: float) -> Schedule:
    """The schedule of a continued run: the epochs done plus those that still fit (iterations unchanged).

    ``spent_seconds`` counts the epochs already trained (their logged times) and this process's start-up;
    ``epoch_seconds`` is the measured time of one epoch including its validation."""
    available = budget_seconds - spent_seconds - final_seconds
    more = max(1, math.floor(available / max(epoch_seconds, 1e-6)))   # the epoch being started always runs
    step = max(0.0, (epoch_seconds - validation_seconds) / max(1, iterations))
    return Schedule(max(1, trained_epochs + more), iterations, budget_seconds, spent_seconds, step,
                    validation_seconds, final_seconds, first_epoch=trained_epochs)


def refit_epochs(budget_seconds: float, elapsed_seconds: float, epochs_done: int, epochs: int,
                 epoch_seconds: float, final_seconds: float) -> int:
    """The total epochs of a fresh run after ``epochs_done`` of ``epochs`` (module docstring): unchanged in the
    second half of the schedule, else ``epochs_done`` plus the epochs that fit the rest of the budget (at least 1)."""
    if epochs_done <= 0 or 2 * epochs_done > epochs or epoch_seconds <= 0:
        return epochs
    left = budget_seconds - elapsed_seconds - final_seconds
    return epochs_done + max(1, math.floor(left / epoch_seconds))


def measure_progress(trainer: "nnRegTrainer", schedule: Schedule) -> tuple[float, float]:
    """(seconds since the budget clock started, mean seconds of the epochs this process trained after its first,
    which is slower: warm-up, calibration), averaged over DDP ranks so that every rank refits alike."""
    import time

    from nnreg.training.distributed import mean_over_ranks

    times = _logged_epoch_times(trainer, schedule.first_epoch)
    times = times[1:] if len(times) > 1 else times    # the first epoch holds the warm-up and calibration
    ctx, device = trainer.context, trainer.device
    elapsed = mean_over_ranks(time.monotonic() - trainer.budget_clock, ctx, device)
    return elapsed, mean_over_ranks(sum(times) / len(times) if times else 0.0, ctx, device)


def refit_trainer_epochs(trainer: "nnRegTrainer", schedule: Schedule) -> tuple[int, float]:
    """(:func:`refit_epochs` for ``trainer`` after its current epoch, the mean epoch seconds it used)."""
    elapsed, epoch_seconds = measure_progress(trainer, schedule)
    epochs = refit_epochs(schedule.budget_seconds, elapsed, trainer.current_epoch, trainer.hp.epochs, epoch_seconds,
                          schedule.final_validation_seconds)
    return epochs, epoch_seconds


@dataclass(frozen=True)
class Timing:
    """What :func:`measure_trainer` measured (seconds, averaged over DDP ranks)."""

    spent_seconds: float            # this process so far (+ the logged epochs of a continued run)
    step_seconds: float             # one training step (fresh runs; 0 for a continued run)
    epoch_seconds: float            # one logged epoch incl. validation (continued runs; 0 for a fresh run)
    validation_seconds: float       # one epoch's validation
    final_validation_seconds: float


def measure_trainer(trainer: "nnRegTrainer") -> Timing:
    """Measure ``trainer`` at the start of its first epoch in this process.

    A fresh run takes one warm-up and :data:`CALIBRATION_STEPS` timed training steps (real steps of epoch 1,
    logged like the others) and times one validation pair; a continued run (``current_epoch`` > 0) takes its
    epoch time from the log. Measurements are averaged over DDP ranks, so every rank chooses the same schedule.
    """
    import time

    import torch

    from nnreg.training.distributed import mean_over_ranks

    hp, ctx, device = trainer.hp, trainer.context, trainer.device
    pair_seconds = _time_validation_pair(trainer)
    share = len(trainer.validation.share(ctx.rank, ctx.world_size)) if trainer.validation is not None else 0
    step = epoch_seconds = 0.0
    logged = 0.0
    if trainer.current_epoch > 0:
        times = _logged_epoch_times(trainer)
        epoch_seconds = sum(times[-5:]) / len(times[-5:]) if times else 0.0
        logged = sum(times)
    else:
        trainer._train_outputs.append(trainer.train_step(trainer.loader.next_batch()))     # warm-up, workers start
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.monotonic()
        for _ in range(CALIBRATION_STEPS):
            trainer._train_outputs.append(trainer.train_step(trainer.loader.next_batch()))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step = (time.monotonic() - start) / CALIBRATION_STEPS
        trainer.sample_position = trainer.loader.position
    if not pair_seconds:
        pair_seconds = step / 3 if step else epoch_seconds / max(1, hp.iterations_per_epoch) / 3   # ~ a forward pass
    final = final_validation_seconds(_final_validation_pairs(trainer), pair_seconds,
                                     full_size_factor(trainer.configuration)) if hp.final_validation else 0.0
    spent = time.monotonic() - trainer.budget_clock + logged
    values = [mean_over_ranks(v, ctx, device) for v in (spent, step, epoch_seconds, share * pair_seconds, final)]
    return Timing(*values)


def fit_trainer_schedule(trainer: "nnRegTrainer") -> Schedule:
    """The schedule of ``trainer`` under ``hp.time_budget_minutes`` from :func:`measure_trainer`."""
    hp = trainer.hp
    budget = float(hp.time_budget_minutes) * 60.0
    timing = measure_trainer(trainer)
    if trainer.current_epoch > 0:
        return extend_schedule(budget, timing.spent_seconds, trainer.current_epoch, timing.epoch_seconds,
                               hp.iterations_per_epoch, timing.validation_seconds, timing.final_validation_seconds)
    return fit_schedule(budget, timing.spent_seconds, timing.step_seconds, timing.validation_seconds,
                        timing.final_validation_seconds, hp.iterations_per_epoch)


def _logged_epoch_times(trainer: "nnRegTrainer", first_epoch: int = 0) -> list[float]:
    """The logged wall seconds of the epochs from ``first_epoch`` on (epochs without a time left out)."""
    return [t for t in trainer.log.values.get("epoch_time", [])[first_epoch:] if t is not None]


def _time_validation_pair(trainer: "nnRegTrainer") -> float:
    """Seconds of one epoch-validation pair (the network's forward pass and the metrics), 0 without pairs."""
    import time

    pairs = trainer.validation.share(trainer.context.rank, trainer.context.world_size) if trainer.validation else []
    if not pairs:
        return 0.0
    trainer.network.eval()
    start = time.monotonic()
    trainer.validation_step(*pairs[0])
    seconds = time.monotonic() - start
    trainer.network.train()
    return seconds


def _final_validation_pairs(trainer: "nnRegTrainer") -> int:
    """How many pairs the final validation will register: the fold's held-out pairs and dataset.json's."""
    from nnreg.training.data.pairs import ordered_pairs
    from nnreg.training.final_validation import dataset_validation_pairs
    from nnreg.utilities.errors import NnregError

    held_out, _ = trainer.workspace.final_validation_cases()
    count = len(ordered_pairs(held_out, limit=trainer.hp.final_val_max_pairs, seed=0))
    if held_out:
        try:
            count += len(dataset_validation_pairs(trainer.workspace.data_folder, held_out[0]))
        except (OSError, KeyError, ValueError, NnregError):   # no raw dataset reachable: the final validation skips it too
            pass
    return count
