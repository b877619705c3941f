"""The interface every nnreg registration network implements, so the trainer and predictor treat them alike.

A network is built from JSON kwargs (kept in ``self.config``), reports the plans entry that rebuilds it
(``architecture``) and the multiple its input shape must have (``divisor``), and maps ``(moving, fixed)`` to a
:class:`~nnreg.networks.output.RegistrationOutput`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class RegistrationNetwork(nn.Module):
    """Base class: ``config`` (JSON kwargs), ``architecture``, ``divisor`` and the input check."""

    #: name used in plans; registered classes use their short name, others default to the dotted import path
    network_class: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        raise NotImplementedError

    @property
    def architecture(self) -> dict[str, Any]:
        """The plans ``architecture`` entry that rebuilds this network through ``build_network``."""
        name = self.network_class or f"{type(self).__module__}.{type(self).__qualname__}"
        return {"network_class": name, "kwargs": dict(self.config)}

    def check_pair(self, moving: torch.Tensor, fixed: torch.Tensor, divisible: bool = True) -> None:
        """Raise ValueError unless both are (B, 1, H, W, D) of one shape (divisible by ``divisor`` if asked)."""
        if moving.dim() != 5 or moving.shape[1] != 1 or moving.shape != fixed.shape:
            raise ValueError(f"expected two (B, 1, H, W, D) tensors, got {tuple(moving.shape)}, {tuple(fixed.shape)}")
        if divisible and any(s % self.divisor for s in moving.shape[2:]):
            raise ValueError(f"input shape {tuple(moving.shape[2:])} is not divisible by {self.divisor}")
