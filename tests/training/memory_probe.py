"""Run in a fresh process: peak RSS growth of one ``nnRegTrainer.train_step`` (after a warm-up step).

Usage: ``python -m tests.training.memory_probe PREPROCESSED_DATASET_FOLDER`` -> prints JSON on the last line.
"""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch

from nnreg.training.distributed import DistributedContext
from nnreg.training.hyperparameters import TrainingHyperparameters
from nnreg.training.trainer import nnRegTrainer
from nnreg.training.workspace import TrainingWorkspace

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main(folder: Path) -> None:
    workspace = TrainingWorkspace.create(folder.name, folder, folder.parent / "results", "nnRegPlans", "3d_fullres",
                                         "0", "nnRegTrainer")
    hp = TrainingHyperparameters(epochs=1, iterations_per_epoch=3, val_pairs=0, num_workers=0,
                                 final_validation=False)
    trainer = nnRegTrainer(workspace, hp, torch.device("cpu"), DistributedContext())
    trainer.on_train_start()
    trainer.on_epoch_start()
    batch = trainer.loader.next_batch()
    # warm up (Adam state, lazy initialisation) at a small crop, so the heap is not pre-grown to the full size
    size = [max(16, getattr(trainer.module, "divisor", 1))] * 3
    trainer.train_step({k: v[:, :, :size[0], :size[1], :size[2]].contiguous() for k, v in batch.items()})
    gc.collect()
    baseline = _rss()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    trainer.train_step(batch)
    config = workspace.plans.configuration("3d_fullres")
    print(json.dumps({"measured_bytes": _peak_rss() - baseline, "architecture": config.architecture,
                      "shape": config.shape, "batch_size": config.batch_size}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
