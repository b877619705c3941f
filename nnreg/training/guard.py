"""Divergence guard: training that cannot silently collapse.

Two checks, each with one log line when it acts:

- **Per step** (:meth:`DivergenceGuard.check_step`): a non-finite loss or gradient norm, or a loss spike (above the
  median of the last steps by more than ``spike_factor`` robust deviations), skips the optimiser step. A skipped
  step costs one batch; applying it can destroy weights that took days to train (a single non-finite Adam
  update poisons every later one). Under DDP the decision is made collectively, so the ranks stay identical.
  After ``max_consecutive_skips`` skipped steps in a row the guard asks for a restore (below).
- **Per epoch** (:meth:`DivergenceGuard.check_validation`): a validation NCC below ``collapse_fraction`` of the
  zero-displacement NCC of the same pairs means the network moves the anatomy out of alignment (the collapse of
  issue 11 ended at NCC 0.0001 against ~0.2 for doing nothing). The trainer then restores the last state that
  passed the check (weights and optimiser, kept in CPU memory) and halves the learning rate: a collapse is a step too
  large for the current loss landscape, and restarting from the same state with the same rate repeats it.
  After ``max_restores`` restores training stops with a one-line error.

The zero-displacement NCC is a natural floor: a registration network that is worse than the identity has
failed, whatever its loss says. Thresholds are deliberately loose so that normal training never trips them.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)


class TrainingDivergedError(NnregError):
    """Training collapsed repeatedly even after restoring the last good state with a lower learning rate."""

    exit_code = 4


@dataclass(frozen=True)
class GuardSettings:
    """Thresholds of the divergence guard (serialised with the hyperparameters)."""

    spike_window: int = 50              # recent step losses the spike test compares with
    spike_warmup: int = 20              # steps before the spike test is active
    spike_factor: float = 10.0          # robust deviations (1.4826 * MAD) above the median that count as a spike
    spike_floor: float = 0.05           # minimum deviation (loss units) so a flat loss history is not brittle
    max_consecutive_skips: int = 10     # skipped steps in a row that trigger a restore
    collapse_fraction: float = 0.5      # val NCC below this fraction of the zero-displacement NCC = collapse
    max_restores: int = 3               # restores before training stops with an error
    lr_factor: float = 0.5              # learning-rate multiplier applied at each restore


@dataclass
class StepVerdict:
    """Whether to apply the step, and why not."""

    apply: bool
    reason: str = ""
    restore: bool = False


class DivergenceGuard:
    """Per-step and per-epoch checks; holds the last good state and the learning-rate multiplier."""

    def __init__(self, settings: GuardSettings = GuardSettings()) -> None:
        self.settings = settings
        self.recent: deque[float] = deque(maxlen=settings.spike_window)
        self.consecutive_skips = 0
        self.skipped_steps = 0
        self.restores = 0
        self.lr_multiplier = 1.0
        self.zero_displacement_ncc: float | None = None
        self._good_state: dict[str, Any] | None = None
        self._good_epoch: int | None = None

    # -- per step ----------------------------------------------------------------------------------------
    def step_problem(self, loss: float, grad_norm: float) -> str:
        """Why this step must not be applied ('' if it may): non-finite values or a loss spike."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        s = self.settings
        if len(self.recent) >= s.spike_warmup:
            history = np.asarray(self.recent)
            median = float(np.median(history))
            deviation = max(1.4826 * float(np.median(np.abs(history - median))), s.spike_floor)
            if loss > median + s.spike_factor * deviation:
                return f"loss spike ({loss:.4g} against a recent median of {median:.4g})"
        return ""

    def check_step(self, loss: float, grad_norm: float, problem: str | None = None) -> StepVerdict:
        """Decide on one step; ``problem`` overrides the local analysis (the collective DDP decision)."""
        reason = self.step_problem(loss, grad_norm) if problem is None else problem
        if not reason:
            self.recent.append(loss)
            self.consecutive_skips = 0
            return StepVerdict(True)
        self.skipped_steps += 1
        self.consecutive_skips += 1
        restore = self.consecutive_skips >= self.settings.max_consecutive_skips
        logger.warning("skipped an optimiser step: %s (%d skipped so far%s)", reason, self.skipped_steps,
                       "; restoring the last good state" if restore else "")
        return StepVerdict(False, reason, restore)

    # -- per epoch ---------------------------------------------------------------------------------------
    def validation_collapsed(self, val_ncc: float | None) -> bool:
        """True if the validation NCC fell below the collapse threshold (or is not finite)."""
        if val_ncc is None or self.zero_displacement_ncc is None:
            return False
        if not math.isfinite(val_ncc):
            return True
        return val_ncc < self.settings.collapse_fraction * self.zero_displacement_ncc

    def remember(self, epoch: int, network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Keep a CPU copy of a state that passed the checks (weights and optimiser moments).

        Each tensor is copied straight to the CPU, into the previous snapshot's buffers where they fit, so the
        snapshot never duplicates the state in GPU memory. Once no restore is left (the next one raises) nothing is
        copied any more."""
        if self.restores >= self.settings.max_restores:
            return
        previous = self._good_state or {}
        self._good_state = {"network": _cpu_copy(network.state_dict(), previous.get("network")),
                            "optimizer": _cpu_copy(optimizer.state_dict(), previous.get("optimizer"))}
        self._good_epoch = epoch

    def restore(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer, why: str) -> None:
        """Put the last good state back and lower the learning rate; raise after ``max_restores`` restores."""
        self.restores += 1
        if self.restores > self.settings.max_restores or self._good_state is None:
            raise TrainingDivergedError(
                f"training diverged ({why}) after {self.restores - 1} restore(s) of the last good state with a "
                f"lower learning rate; train again with a smaller --lr (now x{self.lr_multiplier:g})")
        network.load_state_dict(self._good_state["network"])
        # fresh copies: the optimiser moves them to its parameters' device, and on the CPU it would otherwise keep
        # (and update in place) the snapshot's own tensors
        optimizer.load_state_dict(_cpu_copy(self._good_state["optimizer"]))
        self.lr_multiplier *= self.settings.lr_factor
        self.recent.clear()
        self.consecutive_skips = 0
        logger.warning("divergence guard: %s; restored the state after epoch %s and lowered the learning rate to "
                       "x%g of the schedule (restore %d of at most %d)", why,
                       "start" if self._good_epoch is None or self._good_epoch < 0 else self._good_epoch,
                       self.lr_multiplier, self.restores, self.settings.max_restores)

    # -- checkpoints -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"lr_multiplier": self.lr_multiplier, "restores": self.restores, "skipped_steps": self.skipped_steps,
                "zero_displacement_ncc": self.zero_displacement_ncc}

    def load_json(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.lr_multiplier = float(state.get("lr_multiplier", 1.0))
        self.restores = int(state.get("restores", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("zero_displacement_ncc") is not None:
            self.zero_displacement_ncc = float(state["zero_displacement_ncc"])


def _cpu_copy(obj: Any, into: Any = None) -> Any:
    """``obj`` (a state dict) with every tensor copied to the CPU, reusing the tensors of ``into`` (an earlier copy of
    the same structure) where shape and dtype match; never a view of a live tensor."""
    if isinstance(obj, torch.Tensor):
        source = obj.detach()
        if (isinstance(into, torch.Tensor) and into.device.type == "cpu" and into.shape == source.shape
                and into.dtype == source.dtype):
            return into.copy_(source)
        return source.to("cpu", copy=True)
    if isinstance(obj, dict):
        previous = into if isinstance(into, dict) else {}
        return {k: _cpu_copy(v, previous.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        previous = into if isinstance(into, (list, tuple)) and len(into) == len(obj) else [None] * len(obj)
        copied = [_cpu_copy(v, p) for v, p in zip(obj, previous)]
        return copied if isinstance(obj, list) else tuple(copied)
    return obj
