"""Named training schedules (``nnreg_train ... --preset paper``): hyperparameter overrides that depend on the run.

``paper`` is the seed paper's schedule (section 3.2, Learn2Reg 2024 LUMIR, "next-gen-nn"): 200 epochs, an epoch
being one pass over the training images, Adam starting at 4e-4, batch 1, λ0 = 1 on the NCC loss and λ1 = 6 on
the gradient regulariser (eq. 1), nothing the paper does not mention: no intensity or spatial augmentation, no
gradient clipping. The decay (poly 0.9), the NCC window (9) and the deep supervision over the 5 levels are not stated in
the paper and come from its team's public code (EOIR), as do nnreg's defaults. A preset needs the number of
training images, the plan's batch size and the number of processes, so it is resolved when the job is prepared;
options given explicitly on the command line win over it.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from nnreg.utilities.errors import ConfigurationError

logger = logging.getLogger(__name__)

PAPER_EPOCHS = 200
PAPER_BATCH_SIZE = 1

#: fixed overrides of each preset (``iterations_per_epoch`` is computed, see :func:`preset_overrides`)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "epochs": PAPER_EPOCHS,
        "lr": 4e-4,
        "poly_exponent": 0.9,
        "lambda_ncc": 1.0,
        "lambda_reg": 6.0,
        "ncc_window": 9,
        "deep_supervision": True,
        "augmentation": False,
        "spatial_augmentation": False,
        "contrast_augmentation": False,
        "grad_clip_norm": None,
    },
}


def iterations_for_one_pass(n_train_images: int, batch_size: int, world_size: int) -> int:
    """Steps per process for one pass over the training images: ``ceil(n / (batch * world size))``."""
    if n_train_images < 1:
        raise ConfigurationError("the preset needs at least one training image")
    return max(1, math.ceil(n_train_images / (max(1, batch_size) * max(1, world_size))))


def preset_overrides(name: str, n_train_images: int, batch_size: int, world_size: int = 1) -> dict[str, Any]:
    """The hyperparameter overrides of preset ``name`` for this run (unknown names are a one-line error)."""
    if name not in PRESETS:
        raise ConfigurationError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    overrides = dict(PRESETS[name])
    overrides["iterations_per_epoch"] = iterations_for_one_pass(n_train_images, batch_size, world_size)
    if name == "paper" and batch_size != PAPER_BATCH_SIZE:
        logger.warning("preset paper: the plan's batch size is %d, the paper's is %d (set \"batch_size\": 1 in the "
                       "plans for the paper's exact schedule); an epoch is still one pass over the %d images",
                       batch_size, PAPER_BATCH_SIZE, n_train_images)
    logger.info("preset %s: %d epochs x %d iterations (%d training images, batch %d x %d process(es))", name,
                overrides["epochs"], overrides["iterations_per_epoch"], n_train_images, batch_size, world_size)
    return overrides
