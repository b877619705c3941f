"""Training throughput of nnreg's trainer: the default plan architecture next to the VoxelMorph baseline.

Both run under the same ``nnRegTrainer`` (same loss, deep supervision where the network has levels, data loader,
optimizer) in one process, on the same synthetic preprocessed pairs at 80x112x96 (the 2 mm LUMIR grid). A step =
loading a pair + forward + loss + backward + Adam update; the first ``--warmup`` steps are not timed.

    python benchmarks/train_throughput.py --steps 5 --json train_throughput.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnreg.networks import default_architecture  # noqa: E402
from nnreg.planning.plans import ConfigurationPlan, Plans  # noqa: E402
from nnreg.planning.topology import cascade_depth  # noqa: E402
from nnreg.preprocessing.storage import save_case  # noqa: E402
from nnreg.training.distributed import DistributedContext  # noqa: E402
from nnreg.training.hyperparameters import TrainingHyperparameters  # noqa: E402
from nnreg.training.trainer import nnRegTrainer  # noqa: E402
from nnreg.training.workspace import TrainingWorkspace  # noqa: E402
from nnreg.utilities.files import write_json  # noqa: E402
from tests.synthetic import make_subject  # noqa: E402

logger = logging.getLogger("benchmarks.train_throughput")
SHAPE = (80, 112, 96)


def _dataset(root: Path, architectures: dict[str, dict[str, Any]], n_images: int) -> Path:
    """A preprocessed dataset (images in [0, 1]) with one plans file per architecture, sharing the data."""
    dataset = root / "Dataset999_Throughput"
    data = dataset / "bench_3d_fullres"
    for i in range(n_images):
        image, labels = make_subject(SHAPE, seed=i)
        save_case(data, f"IMG_{i:04d}", image / 255.0, labels, {"case_id": f"IMG_{i:04d}", "source": "",
                                                                 "labels_source": None})
    ids = [f"IMG_{i:04d}" for i in range(n_images)]
    write_json([{"train": ids, "val": ids[:2]}], dataset / "splits_final.json")
    for name, arch in architectures.items():
        config = ConfigurationPlan(data_identifier="bench_3d_fullres", spacing=[2.0] * 3, resampling_factor=[1.0] * 3,
                                   resampled_shape=list(SHAPE), crop_start=[0, 0, 0], shape=list(SHAPE),
                                   normalization={"scheme": "fixed_range", "lower": 0.0, "upper": 255.0},
                                   batch_size=1, architecture=arch)
        Plans("Dataset999_Throughput", name, [2.0] * 3, list(SHAPE), {"3d_fullres": config}).save(
            dataset / f"{name}.json")
    return dataset


def measure(dataset: Path, plans_name: str, steps: int, warmup: int, workers: int) -> dict[str, Any]:
    """Seconds per training step of ``plans_name`` through ``nnRegTrainer.train_step``."""
    workspace = TrainingWorkspace.create(dataset.name, dataset, dataset.parent / "results", plans_name, "3d_fullres",
                                         "0", "nnRegTrainer")
    hp = TrainingHyperparameters(epochs=1, iterations_per_epoch=steps + warmup, val_pairs=0, num_workers=workers,
                                 final_validation=False)
    trainer = nnRegTrainer(workspace, hp, torch.device("cpu"), DistributedContext())
    trainer.on_train_start()
    trainer.on_epoch_start()
    times = []
    for step in range(steps + warmup):
        start = time.perf_counter()
        trainer.train_step(trainer.loader.next_batch())
        elapsed = time.perf_counter() - start
        if step >= warmup:
            times.append(elapsed)
        logger.info("%s step %d: %.2f s", plans_name, step, elapsed)
    trainer.loader.close()
    params = sum(p.numel() for p in trainer.module.parameters())
    mean = float(np.mean(times))
    return {"plans": plans_name, "network_class": workspace.plans.configuration("3d_fullres").architecture[
        "network_class"], "parameters": params, "seconds_per_step": mean, "seconds_per_step_min": float(min(times)),
        "pairs_per_second": 1.0 / mean, "steps_timed": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per architecture")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    architectures = {"default": default_architecture(cascade_depth(list(SHAPE))),
                     "voxelmorph": {"network_class": "VoxelMorph", "kwargs": {}}}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = _dataset(Path(tmp), architectures, n_images=4)
        rows = [measure(dataset, name, args.steps, args.warmup, args.num_workers) for name in architectures]
    header = f"{'architecture':<12} {'network':<14} {'params':>9} {'s/step':>8} {'pairs/s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['plans']:<12} {r['network_class']:<14} {r['parameters']:>9,d} {r['seconds_per_step']:>8.2f} "
              f"{r['pairs_per_second']:>8.3f}")
    result = {"shape": list(SHAPE), "threads": torch.get_num_threads(), "batch_size": 1, "torch": torch.__version__,
              "load_average": os.getloadavg(), "rows": rows,
              "architectures": architectures}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
