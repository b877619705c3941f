"""Polynomial learning-rate decay (nnU-Net's PolyLR): ``lr = lr0 * (1 - epoch / epochs) ** exponent``.

A pure function of the epoch, so resuming needs no scheduler state.
"""
from __future__ import annotations

import torch


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """Learning rate for ``epoch`` (0-based) of ``max_epochs``."""
    return initial_lr * (1.0 - min(epoch, max_epochs) / max_epochs) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
