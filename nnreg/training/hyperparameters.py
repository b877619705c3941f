"""Every training setting in one dataclass: set from the CLI or Python, no subclass needed for a number.

Serialised to JSON in ``debug.json`` and inside every checkpoint; ``--c`` restores the checkpoint's values and
applies only the options given explicitly on the command line (each change is logged). ``contrast_augmentation``
left at None takes the plans' choice (``ConfigurationPlan.contrast_augmentation``) when the trainer starts, so
``nnreg_train --contrast-augmentation / --no-contrast-augmentation`` overrides the planner and checkpoints hold the
value used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nnreg.losses.similarity import SIMILARITIES
from nnreg.utilities.errors import ConfigurationError


@dataclass(frozen=True)
class TrainingHyperparameters:
    """Training settings (the paper's: Adam 4e-4, poly 0.9, λ_ncc 1, λ_reg 6, NCC window 9, deep supervision)."""

    epochs: int = 200
    iterations_per_epoch: int = 250
    lr: float = 4e-4
    poly_exponent: float = 0.9
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 12.0
    lambda_ncc: float = 1.0
    lambda_reg: float = 6.0
    ncc_window: int = 9
    similarity: str = "lncc"              # "lncc" (local NCC) or "mind" (MIND-SSC, contrast-agnostic), every level
    deep_supervision: bool = True
    augmentation: bool = True             # intensity augmentation of each image
    spatial_augmentation: bool = False    # affine + elastic per image, flips / axis swaps per pair (augmentation.py); off until measured
    contrast_augmentation: bool | None = None   # new contrast per image (ContrastRandomizer); None: the plans' choice
    val_pairs: int = 8                    # pairs validated at the end of every epoch (preprocessed grid)
    final_validation: bool = True         # run the full-size final validation at the end of training
    final_val_max_pairs: int = 200        # cap on the ordered held-out pairs of the final validation (0 = all)
    checkpoint_every: int = 10            # checkpoint_latest.pth every N epochs (and at the last epoch)
    ema_alpha: float = 0.9                # smoothing of the validation metric that picks checkpoint_best
    amp: bool = True                      # bf16 autocast on CUDA (ignored on CPU/MPS)
    seed: int = 12345
    deterministic: bool = False
    compile: bool = False
    num_workers: int | None = None        # None: min(4, CPU cores // processes) ; 0: load in the main process
    time_budget_minutes: float | None = None   # fit epochs x iterations to this wall time (nnreg.training.budget)
    pretrained_weights: str | None = None      # fine-tune: start from these weights (nnreg.training.pretrained)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.iterations_per_epoch >= 1, "iterations_per_epoch must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.ncc_window >= 1 and self.ncc_window % 2 == 1, "ncc_window must be an odd number >= 1"),
            (self.similarity in SIMILARITIES, f"similarity must be one of {', '.join(SIMILARITIES)}"),
            (self.contrast_augmentation is None or isinstance(self.contrast_augmentation, bool),
             "contrast_augmentation must be true, false or None (the plans' choice)"),
            (self.lambda_ncc >= 0 and self.lambda_reg >= 0, "lambda_ncc and lambda_reg must be >= 0"),
            (self.val_pairs >= 0 and self.final_val_max_pairs >= 0, "validation pair counts must be >= 0"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (0.0 <= self.ema_alpha < 1.0, "ema_alpha must be in [0, 1)"),
            (self.num_workers is None or self.num_workers >= 0, "num_workers must be >= 0"),
            (self.time_budget_minutes is None or self.time_budget_minutes > 0, "time_budget_minutes must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(f"invalid hyperparameter: {message}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainingHyperparameters":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainingHyperparameters":
        """A copy with ``overrides`` applied (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigurationError(f"unknown hyperparameter(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(self, **overrides)
