"""Cost of the similarity terms: local NCC against MIND-SSC, forward and forward + backward, at 2 mm and 1 mm.

Three ways a loss is paid for, timed in the same run on the same random images:

* ``lncc`` — ``nnreg.losses.local_ncc_loss`` (window 9) of the fixed and the warped image (training and refinement);
* ``mind (images)`` — ``nnreg.losses.mind.mind_loss``: both descriptors from the images, the warped one every step
  (what a training loss on warped images pays);
* ``mind (warped descriptor)`` — the refinement's way: descriptors computed once, the moving descriptor's 12
  channels warped by the field every step (``nnreg.spatial.warp``), then ``mind_descriptor_loss``; the warp is part
  of the timed step, and for comparison the ``lncc`` row warps its one channel too.

    python benchmarks/similarity_cost.py --shapes 80x112x96 160x224x192 --json similarity_cost.json

Prints a table (median seconds of ``--repeats`` runs after one warm-up) and writes it to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nnreg.losses import local_ncc_loss
from nnreg.losses.mind import mind_descriptor_loss, mind_loss, mind_ssc
from nnreg.spatial import warp

logger = logging.getLogger("benchmarks.similarity_cost")


def _step_functions(fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> loss of a field (1, 3, H, W, D); the fixed parts that a method computes once are computed here."""
    fixed_descriptor, moving_descriptor = mind_ssc(fixed), mind_ssc(moving)
    return {
        "lncc": lambda field: local_ncc_loss(fixed, warp(moving, field), 9),
        "mind (images)": lambda field: mind_loss(fixed, warp(moving, field)),
        "mind (warped descriptor)": lambda field: mind_descriptor_loss(fixed_descriptor,
                                                                       warp(moving_descriptor, field)),
    }


def time_step(step: Callable[[torch.Tensor], torch.Tensor], field: torch.Tensor, backward: bool,
              repeats: int) -> float:
    """Median seconds of one loss evaluation (and its backward) over ``repeats`` runs after one warm-up."""
    times = []
    for k in range(repeats + 1):
        field.grad = None
        start = time.perf_counter()
        if backward:
            step(field).backward()
        else:
            with torch.no_grad():
                step(field)
        if k:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(shape: tuple[int, int, int], repeats: int) -> dict[str, dict[str, float]]:
    """Median forward and forward + backward seconds of each similarity on random images of ``shape``."""
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand((1, 1, *shape), generator=gen)
    moving = torch.rand((1, 1, *shape), generator=gen)
    field = (torch.randn((1, 3, *shape), generator=gen) * 0.5).requires_grad_(True)
    rows = {}
    for name, step in _step_functions(fixed, moving).items():
        rows[name] = {"forward_s": time_step(step, field, False, repeats),
                      "forward_backward_s": time_step(step, field, True, repeats)}
    return rows


def main() -> None:
    """Command line: time every similarity at each ``--shapes`` grid, log the table, optionally write ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["80x112x96", "160x224x192"], help="HxWxD shapes")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per method and shape")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict[str, dict[str, float]]] = {}
    lines = [f"{'shape':>12s} {'similarity':26s} {'forward s':>10s} {'fwd+bwd s':>10s} {'x lncc':>7s}", "-" * 70]
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split("x"))
        rows = measure(shape, args.repeats)   # type: ignore[arg-type]
        results[text] = rows
        base = rows["lncc"]["forward_backward_s"]
        for name, row in rows.items():
            lines.append(f"{text:>12s} {name:26s} {row['forward_s']:10.3f} {row['forward_backward_s']:10.3f} "
                         f"{row['forward_backward_s'] / base:7.2f}")
    logger.info("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
