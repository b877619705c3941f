"""Module-level functions for the spawned workers of test_workers.py (spawned processes import them by name)."""
from __future__ import annotations

import os
import signal

from nnreg.utilities.errors import DatasetError


def square_or_die(x: int) -> int:
    """x * x; item 3 kills its own process (as the out-of-memory killer would), item -1 raises a user error."""
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == -1:
        raise DatasetError("image is all zero", f"case_{x}.nii.gz")
    return x * x


def prepare_or_die(pair: object) -> str:
    """A reader's ``prepare`` that dies (SIGKILL) on the pair whose moving image is named ``die``."""
    if getattr(pair, "moving").name == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return str(getattr(pair, "moving"))
