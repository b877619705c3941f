"""Run a function over items in worker processes with a progress bar; ``num_processes=0`` runs inline.

A worker's exception is re-raised in the parent unchanged (user errors keep their one-line message;
others keep the worker's traceback as their cause), never swallowed.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm


def map_with_progress(fn: Callable[[Any], Any], items: Sequence[Any], num_processes: int, desc: str,
                      disable: bool | None = None) -> list[Any]:
    """``[fn(x) for x in items]`` with a progress bar, in ``num_processes`` workers (0 = this process)."""
    items = list(items)
    bar_kwargs = {"total": len(items), "desc": desc, "disable": disable, "leave": False}
    if num_processes <= 0 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, **bar_kwargs)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(num_processes, len(items))) as pool:
        results: Iterable[Any] = pool.imap(fn, items)
        return list(tqdm(results, **bar_kwargs))
