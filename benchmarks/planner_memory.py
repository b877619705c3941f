"""Validate the planner's memory model: predicted vs measured peak memory of one real training step.

    python benchmarks/planner_memory.py --json OUT.json [--quick] [--no-malloc-variant] [--plans PLANS.json ...]

For each row (architecture, shape, batch size) the prediction of what one steady-state step allocates on top of
parameters, Adam state and the batch is compared with a real CPU step in a fresh subprocess (peak RSS minus the
baseline after a warm-up step; see ``nnreg.planning.memory_check``). Each row is measured twice:

* default glibc malloc (what a user gets) vs ``MemoryEstimate.step_bytes`` (tensors + oneDNN workspaces through
  the glibc model of ``nnreg.planning.allocator``) — ``predicted_bytes`` / ``measured_bytes``;
* ``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor is its own mapping, returned at ``free``: RSS follows the live
  tensors) vs ``step_tensor_bytes`` — ``predicted_tensor_bytes`` / ``measured_mmap_bytes``.

Writes a JSON list of rows (``config``, ``shape``, ``batch_size``, ``predicted_bytes``, ``measured_bytes``,
``ratio`` = measured / predicted, the mmap pair and the predicted total of a training step); prints a table.
``--plans`` adds every configuration of the given plans files (architecture, shape, batch size as planned) whose
estimated CPU step time is below ``--max-seconds`` — "a training step at each planned configuration that fits
this machine runs within its predicted memory".
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from nnreg.networks import default_architecture, voxelmorph_architecture
from nnreg.planning.decision import CPU_FLOPS_PER_THREAD
from nnreg.planning.memory import estimate_memory
from nnreg.planning.plans import Plans
from nnreg.planning.memory_check import measure_training_step
from nnreg.planning.topology import cascade_depth

MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def rows(quick: bool) -> list[tuple[str, dict[str, Any], list[int], int]]:
    """(name, architecture, shape, batch size) of every validated configuration."""
    def cascade(shape: list[int], **kw: Any) -> dict[str, Any]:
        return default_architecture(cascade_depth(shape), **kw)

    small, mid, large = [32, 40, 32], [64, 80, 64], [80, 112, 96]
    table = [
        ("sc32 K3", cascade(small), small, 1),
        ("sc16 K5 batch 2", cascade(small, base_channels=16, kernel_size=5), small, 2),
        ("sc32 K3", cascade(mid), mid, 1),
        ("sc24 K5 +CA+BF", cascade(mid, base_channels=24, kernel_size=5, co_attention=True,
                                   bilateral_filter=True), mid, 1),
        ("sc64 K3 1/2 res", cascade(large, base_channels=64, skip_levels=1), large, 1),
        ("sc32 K3", cascade(large), large, 1),
        ("VoxelMorph", voxelmorph_architecture(), large, 1),
    ]
    return table[:3] if quick else table


def plan_rows(paths: list[Path], max_seconds: float, ram_gb: float) -> list[tuple[str, dict[str, Any], list[int], int]]:
    """One row per planned configuration that this machine can run in ``max_seconds`` within ``ram_gb``."""
    out = []
    for path in paths:
        plans = Plans.load(path)
        for name, cfg in plans.configurations.items():
            label = f"{plans.dataset_name.split('_', 1)[-1]} {plans.plans_name} {name}"
            e = estimate_memory(cfg.architecture, cfg.shape, cfg.batch_size, "cpu")
            seconds = e.flops_training_step / (2 * CPU_FLOPS_PER_THREAD)
            if seconds > max_seconds or e.training_peak_bytes > ram_gb * 1e9:
                logging.info("skipping %s: %.0f s, %.1f GB on this CPU", label, seconds, e.training_peak_bytes / 1e9)
                continue
            out.append((label, cfg.architecture, list(cfg.shape), cfg.batch_size))
    return out


def run(table_rows: list[tuple[str, dict[str, Any], list[int], int]], malloc_variant: bool) -> list[dict[str, Any]]:
    """Predict and measure every row."""
    out = []
    for name, arch, shape, batch in table_rows:
        start = time.time()
        estimate = estimate_memory(arch, shape, batch, "cpu")
        measured = measure_training_step(arch, shape, batch)
        mmap = measure_training_step(arch, shape, batch, env=MMAP_ENV) if malloc_variant else None
        row = {
            "config": name,
            "architecture": arch,
            "shape": shape,
            "batch_size": batch,
            "predicted_bytes": estimate.step_bytes,
            "measured_bytes": measured["measured_bytes"],
            "predicted_tensor_bytes": estimate.step_tensor_bytes,
            "measured_mmap_bytes": mmap["measured_bytes"] if mmap else None,
            "baseline_bytes": measured["baseline_bytes"],
            "ratio": measured["measured_bytes"] / estimate.step_bytes,
            "ratio_mmap": mmap["measured_bytes"] / estimate.step_tensor_bytes if mmap else None,
            "predicted_training_peak_bytes": estimate.training_peak_bytes,
            "resident_bytes": estimate.resident_bytes,
            "seconds": round(time.time() - start, 1),
        }
        logging.info("%s %s: predicted %.0f MB, measured %.0f MB", name, shape, estimate.step_bytes / 1e6,
                     measured["measured_bytes"] / 1e6)
        out.append(row)
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the results (also pasted into documentation/planner.md)."""
    lines = ["| config | shape | batch | predicted MB | measured MB | meas/pred | predicted tensors MB | "
             "measured MB (mmap 64K) | meas/pred (mmap) | resident MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mmap = "-" if r["measured_mmap_bytes"] is None else f"{r['measured_mmap_bytes'] / 1e6:.0f}"
        ratio_mmap = "-" if r["ratio_mmap"] is None else f"{r['ratio_mmap']:.2f}"
        lines.append(f"| {r['config']} | {'x'.join(map(str, r['shape']))} | {r['batch_size']} | "
                     f"{r['predicted_bytes'] / 1e6:.0f} | {r['measured_bytes'] / 1e6:.0f} | {r['ratio']:.2f} | "
                     f"{r['predicted_tensor_bytes'] / 1e6:.0f} | {mmap} | {ratio_mmap} | "
                     f"{r['resident_bytes'] / 1e6:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="Write the rows here.")
    parser.add_argument("--quick", action="store_true", help="Only the three smallest rows.")
    parser.add_argument("--no-malloc-variant", action="store_true",
                        help="Skip the second measurement with MALLOC_MMAP_THRESHOLD_.")
    parser.add_argument("--plans", type=Path, nargs="*", default=[],
                        help="Also measure every configuration of these plans files.")
    parser.add_argument("--plans-only", action="store_true", help="Skip the fixed rows (use with --plans).")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="Skip planned configurations whose estimated CPU step takes longer.")
    parser.add_argument("--max-ram-gb", type=float, default=16.0,
                        help="Skip planned configurations predicted to need more RAM than this.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    selected = [] if args.plans_only else rows(args.quick)
    selected += plan_rows(args.plans, args.max_seconds, args.max_ram_gb)
    results = run(selected, not args.no_malloc_variant)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    worst = max(abs(r["ratio"] - 1.0) for r in results)
    print(f"largest deviation (default malloc): {worst * 100:.0f} %  (target: within 25 %)")


if __name__ == "__main__":
    main()
