"""Run in a fresh process: peak RSS growth of one ``nnRegTrainer.train_step`` (after a warm-up step).

Usage: ``python -m tests.training.memory_probe PREPROCESSED_DATASET_FOLDER`` -> prints JSON on the last line.
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

from nnreg.planning.memory_check import peak_rss_bytes, reset_peak_rss, rss_bytes
from nnreg.training.distributed import DistributedContext
from nnreg.training.hyperparameters import TrainingHyperparameters
from nnreg.training.trainer import nnRegTrainer
from nnreg.training.workspace import TrainingWorkspace

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
    baseline = rss_bytes()
    reset_peak_rss()
    trainer.train_step(batch)
    config = workspace.plans.configuration("3d_fullres")
    print(json.dumps({"measured_bytes": peak_rss_bytes() - baseline, "architecture": config.architecture,
                      "shape": config.shape, "batch_size": config.batch_size}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
