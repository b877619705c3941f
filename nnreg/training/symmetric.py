"""Symmetric, inverse-consistent training: both directions of every pair in one step, plus an inverse-consistency
term (the plans key ``symmetric_training`` of a configuration switches it on).

``"symmetric_training": {"lambda_ic": 1.0}`` in a configuration of the plans file: each training step registers
moving → fixed *and* fixed → moving in one batched network call (batch 2B: twice the activations of batch B, so
plan for that), scores each direction with the usual deep-supervised loss, averages them, and adds
``lambda_ic`` × the inverse-consistency penalty of the two final fields (``nnreg.losses.inverse_consistency``,
voxels²). Prediction is unchanged (one direction); ``nnreg_predict --inverse`` then measures how close the
learned fields are to inverse-consistent. Absent or ``null``: the default one-direction training.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from nnreg.losses import DeepSupervisedRegistrationLoss, inverse_consistency_loss
from nnreg.networks.output import LevelOutput, RegistrationOutput
from nnreg.utilities.errors import ConfigurationError

DEFAULT_LAMBDA_IC = 1.0


@dataclass(frozen=True)
class SymmetricTraining:
    """Settings of the symmetric scheme (the plans' ``symmetric_training`` dict)."""

    lambda_ic: float = DEFAULT_LAMBDA_IC

    @classmethod
    def from_plans(cls, value: Any) -> "SymmetricTraining | None":
        """None (off) for a missing / null / false entry; a dict with ``lambda_ic`` (>= 0) switches it on."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ConfigurationError(f"symmetric_training must be a dict like {{\"lambda_ic\": 1.0}}, got {value!r}")
        unknown = sorted(set(value) - {"lambda_ic"})
        if unknown:
            raise ConfigurationError(f"unknown symmetric_training key(s): {', '.join(unknown)} (known: lambda_ic)")
        lambda_ic = float(value.get("lambda_ic", DEFAULT_LAMBDA_IC))
        if lambda_ic < 0:
            raise ConfigurationError(f"symmetric_training.lambda_ic must be >= 0, got {lambda_ic}")
        return cls(lambda_ic)

    def step_loss(self, network: torch.nn.Module, loss_fn: DeepSupervisedRegistrationLoss, moving: torch.Tensor,
                  fixed: torch.Tensor,
                  autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logged parts) of one symmetric step: both directions in one network call."""
        b = moving.shape[0]
        with autocast():
            output = network(torch.cat([moving, fixed]), torch.cat([fixed, moving]))
        forward, backward = split_output(output, 0, b), split_output(output, b, 2 * b)
        loss_f, parts = loss_fn(moving, fixed, forward)
        loss_b, _ = loss_fn(fixed, moving, backward)
        ic = inverse_consistency_loss(forward.displacement, backward.displacement)
        total = 0.5 * (loss_f + loss_b) + self.lambda_ic * ic
        return total, {**parts, "ic": float(ic.detach())}


def split_output(output: RegistrationOutput, start: int, stop: int) -> RegistrationOutput:
    """The batch entries ``start:stop`` of a network output (every level sliced alike)."""
    levels = [LevelOutput(velocity=lv.velocity[start:stop], displacement=lv.displacement[start:stop], scale=lv.scale)
              for lv in output.levels]
    return RegistrationOutput(displacement=output.displacement[start:stop], levels=levels)
