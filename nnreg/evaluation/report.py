"""Readable terminal table of an evaluation: one row per pair, then the aggregates.

With a zero-displacement baseline every cell reads ``before -> after`` (zero field -> submitted field).
NaN and inf are printed as such (they are results by the official rules, not errors).
"""
from __future__ import annotations

import math
from typing import Any

from nnreg.evaluation.runner import EvaluationResult, aggregate

AGGREGATE_ROWS = (("mean", "mean"), ("std", "std"), ("30%", "30"))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}"


def _cell(after: Any, before: Any | None, with_baseline: bool) -> str:
    return f"{_fmt(before)} -> {_fmt(after)}" if with_baseline else _fmt(after)


def format_table(result: EvaluationResult) -> str:
    """The table as text (pairs, then mean/std/30th percentile over pairs)."""
    names = sorted({name for case in result.cases.values() for name in case})
    with_baseline = result.baseline is not None
    header = ["pair"] + names
    rows = []
    for key, case in result.cases.items():
        base = (result.baseline or {}).get(key, {})
        rows.append([key] + [_cell(case.get(n, {}).get("mean"), base.get(n, {}).get("mean"), with_baseline)
                             if n in case else "-" for n in names])
    aggregates = aggregate(result.cases, result.protocol)
    base_aggregates = aggregate(result.baseline, result.protocol) if result.baseline else {}
    rows.append(None)
    for label, key in AGGREGATE_ROWS:
        rows.append([label] + [_cell(aggregates[n][key], base_aggregates.get(n, {}).get(key), with_baseline)
                               for n in names])
    widths = [max(len(str(r[i])) for r in [header] + [r for r in rows if r]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if row is None:
            lines.append("  ".join("-" * w for w in widths))
            continue
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for set_name in sorted(set(result.aggregates()) - set(names)):     # LUMIR 2025's per-set Dice
        values = result.aggregates()[set_name]
        lines.append(f"{set_name}: mean {_fmt(values['mean'])}, std {_fmt(values['std'])}, 30% {_fmt(values['30'])}")
    if result.protocol == "lumir25" and "TRE_lm" in names:
        lines.append("TRE_lm robustness (row 30%): the 70th percentile, as LUMIR 2025 reports it")
    if with_baseline:
        lines.append("cells: zero displacement -> submitted field")
    return "\n".join(lines)
