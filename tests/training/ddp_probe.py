"""A trainer for the DDP test: records this rank's final weights and every file the rank opened for writing.

Recording uses a Python audit hook ("open" events: ``open()``, ``os.open``, ``tempfile.mkstemp``), which sees every
write nnreg makes (checkpoints, logs, JSON and PNG all go through a temporary file or ``open``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from nnreg.training.checkpoint import clean_state_dict
from nnreg.training.trainer import nnRegTrainer

_WRITES: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event != "open" or len(args) < 3:
        return
    path, mode, flags = args[0], args[1], args[2]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
        (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        _WRITES.append(os.fsdecode(path))


class ProbeTrainer(nnRegTrainer):
    """nnRegTrainer that reports its weights and writes (to ``$NNREG_TEST_PROBE/rank<r>.*``)."""

    def on_train_start(self) -> None:
        sys.addaudithook(_audit)
        super().on_train_start()

    def on_train_end(self) -> None:
        super().on_train_end()
        probe = Path(os.environ["NNREG_TEST_PROBE"])
        results = str(self.workspace.results_dataset)
        writes = sorted({p for p in _WRITES if p.startswith(results)})
        rank = self.context.rank
        torch.save(clean_state_dict(self.module.state_dict()), probe / f"rank{rank}.pt")
        (probe / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "position": self.sample_position}))
