"""Cost of the seed paper's network variants side by side with the VoxelMorph baseline.

For every variant and input shape: parameters, GFLOPs of an inference forward and of a training step, the
bytes autograd saves in training, the estimated inference peak (all from ``nnreg.networks.cost`` on the meta
device), and with ``--time`` the measured CPU inference time and peak RSS of one forward of a random pair, each in
a fresh process (so the RSS is that forward's alone: model, inputs, output, intermediates, plus ~0.3 GB of Python
and torch).

    python benchmarks/network_cost.py --time                      # 80×112×96
    python benchmarks/network_cost.py --time --full --json out.json  # also 160×224×192
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HALF_SHAPE = (80, 112, 96)
FULL_SHAPE = (160, 224, 192)
GB = 1024**3

logger = logging.getLogger("nnreg.benchmarks.network_cost")


def _measure(architecture: dict[str, Any], shape: tuple[int, ...], channels_last: bool, threads: int | None) -> dict:
    """Child process: build, run one inference forward on random inputs, report seconds and peak RSS."""
    import torch

    from nnreg.networks import build_network

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_network(architecture).eval()
    moving, fixed = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        moving = moving.contiguous(memory_format=torch.channels_last_3d)
        fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(moving, fixed)
    seconds = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert out.displacement.shape[2:] == tuple(shape)
    return {"seconds": seconds, "peak_rss_bytes": rss_peak, "rss_before_bytes": rss_before,
            "threads": torch.get_num_threads(), "channels_last": channels_last}


def measure_in_fresh_process(architecture: dict[str, Any], shape: tuple[int, ...], channels_last: bool,
                             threads: int | None) -> dict:
    """Run :func:`_measure` in a spawned process so peak RSS is not polluted by earlier runs."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measure, architecture, shape, channels_last, threads).result()


def variants(names: list[str] | None) -> dict[str, dict[str, Any]]:
    """The paper's Table 2 variants, the cheaper CPU variants and VoxelMorph (optionally a subset, in order)."""
    from nnreg.networks import CPU_VARIANTS, PAPER_VARIANTS, voxelmorph_architecture

    table = {**PAPER_VARIANTS, **CPU_VARIANTS, "VoxelMorph": voxelmorph_architecture()}
    if names:
        unknown = [n for n in names if n not in table]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {list(table)}")
        return {n: table[n] for n in names}
    return table


def _fmt(value: float | None, scale: float, digits: int = 1) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """A Markdown table (pasted into documentation/network.md)."""
    header = ("| variant | shape | params (M) | GFLOP fwd | GFLOP train step | train activations (GB) "
              "| est. inference peak (GB) | CPU s / pair | peak RSS (GB) |")
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r.get("measured") or {}
        print(f"| {r['variant']} | {'×'.join(map(str, r['shape']))} | {r['parameters'] / 1e6:.2f} "
              f"| {_fmt(r['flops_forward'], 1e9, 0)} | {_fmt(r['flops_training_step'], 1e9, 0)} "
              f"| {_fmt(r['activation_bytes'], GB)} | {_fmt(r['inference_peak_bytes'], GB, 2)} "
              f"| {_fmt(m.get('seconds'), 1.0)} | {_fmt(m.get('peak_rss_bytes'), GB, 2)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write all rows as JSON here")
    parser.add_argument("--shapes", nargs="+", default=None, help="shapes like 80x112x96 (default: 80x112x96)")
    parser.add_argument("--full", action="store_true", help="also 160x224x192")
    parser.add_argument("--time", action="store_true", help="measure CPU inference time and peak RSS")
    parser.add_argument("--time-full", nargs="*", default=None,
                        help="variants to time at 160x224x192 (default with --full: all)")
    parser.add_argument("--variants", nargs="+", default=None, help="subset of variant names")
    parser.add_argument("--channels-last", action="store_true", help="time with channels_last_3d memory format")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the timed process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from nnreg.networks.cost import network_cost

    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes] if args.shapes else [HALF_SHAPE]
    if args.full and FULL_SHAPE not in shapes:
        shapes.append(FULL_SHAPE)
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        for name, arch in variants(args.variants).items():
            row = {"variant": name, "architecture": arch, **network_cost(arch, shape)}
            timed = args.time and (shape != FULL_SHAPE or args.time_full is None or not args.time_full
                                   or name in args.time_full)
            if timed:
                logger.info("timing %s at %s", name, shape)
                row["measured"] = measure_in_fresh_process(arch, shape, args.channels_last, args.threads)
                logger.info("  %.1f s, peak RSS %.2f GB", row["measured"]["seconds"],
                            row["measured"]["peak_rss_bytes"] / GB)
            rows.append(row)
            if args.json:  # keep partial results of long runs
                args.json.write_text(json.dumps(rows, indent=1))
    print_table(rows)


if __name__ == "__main__":
    main()
