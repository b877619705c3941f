"""Statistics and tables of ``benchmarks/accuracy.py``: per-pair metrics from ``nnreg_evaluate``'s metrics.json, the
mean and spread over training seeds, the paired per-pair Dice difference nnreg minus each anchor with a bootstrap
95 % interval over pairs (numpy only, fixed seed), and the markdown tables."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METRICS = {"dice": "DSC", "hd95": "HD95", "tre": "TRE_lm", "ndv": "Non-diffeomorphic Volumes"}
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95


def read_metrics(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(the mean of each benchmark metric, NaN where the config lacks it; Dice per pair keyed as the file's cases)
    from an ``nnreg_evaluate -o`` file."""
    result = json.loads(Path(path).read_text())
    aggregates = result["aggregates"]
    means = {key: float(aggregates[name]["mean"]) if name in aggregates else math.nan for key, name in METRICS.items()}
    per_pair = {case: float(values["DSC"]["mean"]) for case, values in result["cases"].items() if "DSC" in values}
    return means, per_pair


def bootstrap_interval(differences: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences``: pairs resampled with replacement ``resamples``
    times from a generator seeded with ``seed`` (the same draws for every comparison of a run)."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_difference(reference: dict[str, float], anchor: dict[str, float]) -> dict[str, Any]:
    """Per-pair Dice of ``reference`` minus ``anchor`` over the pairs both have: mean, bootstrap interval, wins."""
    keys = sorted(set(reference) & set(anchor))
    differences = [reference[k] - anchor[k] for k in keys]
    low, high = bootstrap_interval(differences)
    return {"pairs": len(keys), "mean": float(np.mean(differences)) if keys else math.nan, "ci95": [low, high],
            "reference_ahead": int(sum(d > 0 for d in differences)),
            "per_pair": {k: d for k, d in zip(keys, differences)}}


def mean_over_seeds(per_seed: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-pair Dice averaged over training seeds (the pairs every seed has)."""
    keys = set(per_seed[0]).intersection(*per_seed[1:]) if per_seed else set()
    return {k: float(np.mean([p[k] for p in per_seed])) for k in sorted(keys)}


def differences(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """For each evaluated anchor (or ablation) row, ``reference`` (nnreg_refined or nnreg) minus it: per seed, and
    with the reference's per-pair Dice averaged over seeds (``seed: "mean"``) when there are several."""
    mine = [r for r in rows if r["method"] == reference and r.get("per_pair_dice")]
    references: list[tuple[Any, dict[str, float]]] = [(r["seed"], r["per_pair_dice"]) for r in mine]
    if len(mine) > 1:
        references.append(("mean", mean_over_seeds([r["per_pair_dice"] for r in mine])))
    out = []
    for row in rows:
        if row.get("kind") not in ("anchor", "ablation") or not row.get("per_pair_dice"):
            continue
        for seed, dice in references:
            out.append({"reference": reference, "anchor": row["method"], "seed": seed,
                        **paired_difference(dice, row["per_pair_dice"]), "resamples": BOOTSTRAP_RESAMPLES,
                        "bootstrap_seed": BOOTSTRAP_SEED})
    return out


def summarize_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per nnreg method: mean, population std, min and max over its seeds of every metric and of s / pair."""
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows if r.get("kind") == "nnreg"):
        mine = [r for r in rows if r["method"] == method and r.get("dice") is not None]
        if not mine:
            continue
        entry: dict[str, Any] = {"method": method, "seeds": [r["seed"] for r in mine]}
        for key in (*METRICS, "seconds_per_pair", "train_minutes"):
            values = np.array([r[key] for r in mine if r.get(key) is not None], dtype=np.float64)
            stats = (values.mean(), values.std(), values.min(), values.max()) if values.size else (math.nan,) * 4
            entry.update({f"{key}_{name}": float(v) for name, v in zip(("mean", "std", "min", "max"), stats)})
        summary.append(entry)
    return summary


# -- tables ---------------------------------------------------------------------------------------------------------
def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per row (nnreg per seed, anchors, zero); a package that is missing says so in the Dice column."""
    lines = ["| method | seed | Dice | HD95 | TRE (vox) | NDV % | s / pair | train min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seed = "" if r.get("seed") is None else str(r["seed"])
        if r.get("status", "ok") != "ok" and r.get("dice") is None:
            lines.append(f"| {r['label']} | {seed} | {r['status']} | | | | | |")
            continue
        lines.append(f"| {r['label']} | {seed} | {_cell(r['dice'], 4)} | {_cell(r['hd95'], 2)} | "
                     f"{_cell(r['tre'], 2)} | {_cell(r['ndv'], 4)} | {_cell(r['seconds_per_pair'], 1)} | "
                     f"{_cell(r.get('train_minutes'), 1)} |")
    return "\n".join(lines)


def format_summary(summary: list[dict[str, Any]]) -> str:
    """Mean ± std (min–max) over seeds per nnreg method."""
    def spread(entry: dict[str, Any], key: str, digits: int) -> str:
        return (f"{_cell(entry[f'{key}_mean'], digits)} ± {_cell(entry[f'{key}_std'], digits)} "
                f"({_cell(entry[f'{key}_min'], digits)}–{_cell(entry[f'{key}_max'], digits)})")

    lines = ["| method | seeds | Dice | HD95 | TRE (vox) | NDV % | s / pair |", "|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['method']} | {len(e['seeds'])} | {spread(e, 'dice', 4)} | {spread(e, 'hd95', 2)} | "
                     f"{spread(e, 'tre', 2)} | {spread(e, 'ndv', 4)} | {spread(e, 'seconds_per_pair', 1)} |")
    return "\n".join(lines)


def format_differences(entries: list[dict[str, Any]]) -> str:
    """One line per comparison: mean paired Dice difference, its bootstrap interval, pairs where nnreg is ahead."""
    lines = [f"| {'' if not entries else entries[0]['reference']} − anchor | seed | pairs | mean ΔDice | "
             f"95 % bootstrap interval | nnreg ahead |", "|---|---|---|---|---|---|"]
    for e in entries:
        low, high = e["ci95"]
        lines.append(f"| {e['anchor']} | {e['seed']} | {e['pairs']} | {e['mean']:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{e['reference_ahead']}/{e['pairs']} |")
    return "\n".join(lines)
