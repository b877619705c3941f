"""When progress bars are shown: never when switched off (``--disable_progress_bar``), else only on a terminal.

``nnreg_train --disable_progress_bar`` sets :data:`DISABLE_ENV` so that every training process it starts (DDP ranks,
spawned workers) inherits the choice; ``nnreg_predict`` passes it to :func:`nnreg.inference.predict_pairs`.
"""
from __future__ import annotations

import os

DISABLE_ENV = "nnReg_disable_progress_bar"


def progress_bar_disabled(disable: bool = False) -> bool | None:
    """tqdm's ``disable``: True when asked for or ``$nnReg_disable_progress_bar`` is set (not ``0``), else None,
    which tqdm reads as "off unless the output is a terminal"."""
    if disable or os.environ.get(DISABLE_ENV, "0").strip().lower() not in ("", "0", "false", "no"):
        return True
    return None
