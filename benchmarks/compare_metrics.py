"""Compare ``nnreg_evaluate -o`` metrics files on the pairs they all have: a slow anchor's fields cached so far
(``nnreg_evaluate --only-present``) against nnreg's on the same pairs, or a TRE that the official mean makes NaN
(one vanished landmark blob) against the others on the pairs where every file's TRE is finite.

Prints, per file, the mean Dice, HD95, TRE and NDV over the common pairs (TRE also over the common pairs where it is
finite in every file), then the first file minus each other per pair: the mean difference, its percentile bootstrap
95 % interval over the pairs (``benchmarks/accuracy_report.py``'s ``paired_difference``, 10,000 resamples, seed 0)
and the pairs where the first file is better (higher Dice, lower HD95 / TRE). ``--json`` writes the same numbers.

    python benchmarks/compare_metrics.py nnreg/metrics.json ants_syn/metrics.json --names nnreg,ants_syn
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_report import METRICS, paired_difference  # noqa: E402

logger = logging.getLogger("compare_metrics")
HIGHER_IS_BETTER = {"dice": True, "hd95": False, "tre": False, "ndv": False}


def per_pair(path: Path) -> dict[str, dict[str, float]]:
    """``{metric: {pair: value}}`` of the benchmark metrics a metrics file has (its cases' ``mean`` entries)."""
    cases = json.loads(Path(path).read_text())["cases"]
    out: dict[str, dict[str, float]] = {}
    for key, name in METRICS.items():
        values = {case: float(entry[name]["mean"]) for case, entry in cases.items() if name in entry}
        if values:
            out[key] = values
    return out


def compare(files: list[dict[str, dict[str, float]]], names: list[str]) -> dict[str, Any]:
    """Means over the pairs every file has, and the first file minus each other, per metric (module docstring)."""
    metrics = [m for m in METRICS if all(m in f for f in files)]
    for metric in METRICS:
        if metric not in metrics and any(metric in f for f in files):
            logger.warning("%s left out: not in every file (%s)", metric,
                           ", ".join(n for n, f in zip(names, files) if metric not in f))
    result: dict[str, Any] = {"names": names, "metrics": {}}
    for metric in metrics:
        common = sorted(set.intersection(*(set(f[metric]) for f in files)))
        finite = [k for k in common if all(math.isfinite(f[metric][k]) for f in files)]
        entry: dict[str, Any] = {"pairs": len(common), "finite_pairs": len(finite), "means": {}, "finite_means": {},
                                 "differences": {}}
        for name, f in zip(names, files):
            entry["means"][name] = float(np.mean([f[metric][k] for k in common])) if common else math.nan
            entry["finite_means"][name] = float(np.mean([f[metric][k] for k in finite])) if finite else math.nan
        first = {k: files[0][metric][k] for k in finite}
        for name, f in zip(names[1:], files[1:]):
            paired = paired_difference(first, {k: f[metric][k] for k in finite})
            better = paired["reference_ahead"] if HIGHER_IS_BETTER[metric] else \
                sum(d < 0 for d in paired["per_pair"].values())
            entry["differences"][name] = {"mean": paired["mean"], "ci95": paired["ci95"], "first_better": int(better)}
        result["metrics"][metric] = entry
    return result


def format_report(result: dict[str, Any]) -> str:
    """Markdown: one table of means, one of the paired differences."""
    names = result["names"]
    lines = ["| metric | pairs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for metric, e in result["metrics"].items():
        lines.append(f"| {metric} | {e['pairs']} | " + " | ".join(f"{e['means'][n]:.4f}" for n in names) + " |")
        if e["finite_pairs"] != e["pairs"]:
            lines.append(f"| {metric} (finite in every file) | {e['finite_pairs']} | "
                         + " | ".join(f"{e['finite_means'][n]:.4f}" for n in names) + " |")
    lines += ["", f"| {names[0]} − other | metric | pairs | mean difference | 95 % bootstrap interval | "
              f"{names[0]} better |", "|---|---|---|---|---|---|"]
    for metric, e in result["metrics"].items():
        for name, d in e["differences"].items():
            low, high = d["ci95"]
            lines.append(f"| {name} | {metric} | {e['finite_pairs']} | {d['mean']:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                         f"{d['first_better']}/{e['finite_pairs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="metrics.json files of nnreg_evaluate -o (2 or more)")
    parser.add_argument("--names", default=None, help="comma-separated row names (default: the files' folders)")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.names.split(",") if args.names else [p.parent.name or str(p) for p in args.metrics]
    if len(args.metrics) < 2 or len(names) != len(args.metrics):
        parser.error("give at least two metrics files and, with --names, one name per file")
    if len(set(names)) != len(names):
        parser.error(f"the rows need different names, got {', '.join(names)} (give --names)")
    for path in args.metrics:
        if not path.is_file():
            parser.error(f"{path}: no such metrics file")
    result = compare([per_pair(p) for p in args.metrics], names)
    if not result["metrics"] or any(e["pairs"] == 0 for e in result["metrics"].values()):
        parser.error("the files have no pair (or no metric) in common: nothing to compare")
    logger.info("%s", format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
