"""Run in a subprocess by test_open_files.py: load training pairs with real workers under a lowered RLIMIT_NOFILE.

``python -m tests.scale.fd_probe FOLDER LIMIT MAX_OPEN WORKERS`` prints one JSON line: the number of distinct images
visited, the samples drawn and the largest number of arrays a worker held open (or the error, exit code 1).
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


def main() -> int:
    folder, limit, max_open, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))   # inherited by the spawned workers
    from nnreg.training.data import PairDataset, PairLoader, PairSampler

    cases = sorted(p.stem for p in folder.glob("*.json"))
    sampler = PairSampler(cases, seed=0)
    loader = PairLoader(PairDataset(folder, sampler, augment=False, max_open=max_open), batch_size=4, start=0,
                        num_samples=40_000, num_workers=workers, device=torch.device("cpu"))
    seen: set[str] = set()
    position = 0
    try:
        while len(seen) < len(cases):
            loader.next_batch()
            for index in range(position, loader.position):
                pair = sampler(index)
                seen.update((pair.fixed, pair.moving))
            position = loader.position
    except Exception as exc:  # noqa: BLE001 - the test reads the message
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000], "visited": len(seen)}))
        return 1
    finally:
        loader.close()
    print(json.dumps({"visited": len(seen), "samples": position, "limit": limit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
