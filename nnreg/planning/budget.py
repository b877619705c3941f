"""The memory budget a plan must fit: GPU memory for ``cuda``, a safe share of RAM for ``cpu``."""
from __future__ import annotations

import os

DEFAULT_GPU_GB = 24.0   # the most common research GPU class (RTX 3090/4090, A5000/A10): plans run there
CPU_SHARE = 0.5         # leave half the RAM to the OS, data loading and the page cache


def machine_ram_gb() -> float:
    """Physical RAM of this machine in GB (decimal)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def memory_budget_gb(device: str, gpu_memory_target: float | None, memory_target: float | None) -> float:
    """The budget in GB for ``device`` from the CLI flags (defaults documented in documentation/planner.md)."""
    if device == "cpu":
        return float(memory_target) if memory_target else round(CPU_SHARE * machine_ram_gb(), 1)
    return float(gpu_memory_target) if gpu_memory_target else DEFAULT_GPU_GB
