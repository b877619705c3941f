"""The memory budget a plan must fit: GPU memory for ``cuda``, a safe share of RAM for ``cpu``.

Defaults (documentation/planner.md): 24 GB on a GPU, the most common research GPU class (RTX 3090/4090,
A5000, A10, L4 has 24 GB too), so default plans train there and on anything larger. On a CPU, half of the RAM
available to this process — the physical RAM or, in a container, the cgroup memory limit, whichever is
smaller: the other half is left to the data-loading workers (each holds a few preprocessed pairs), the page
cache that keeps the memory-mapped training data fast, and the rest of the system.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_GPU_GB = 24.0
CPU_SHARE = 0.5
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def _cgroup_limit_bytes() -> float | None:
    """The container's memory limit in bytes, if one is set (cgroup v2 or v1)."""
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:   # "max" or a huge sentinel mean unlimited
            return float(text)
    return None


def machine_ram_gb() -> float:
    """RAM this process may use in GB (decimal): physical RAM, capped by a container limit."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit_bytes()
    return min(physical, limit) / 1e9 if limit else physical / 1e9


def default_device() -> str:
    """The device plans target when none is given: ``cuda`` only where a CUDA device is present."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def memory_budget_gb(device: str, gpu_memory_target: float | None, memory_target: float | None) -> float:
    """The budget in GB for ``device`` from the CLI flags (defaults documented in documentation/planner.md)."""
    if device == "cpu":
        return float(memory_target) if memory_target else round(CPU_SHARE * machine_ram_gb(), 1)
    return float(gpu_memory_target) if gpu_memory_target else DEFAULT_GPU_GB
