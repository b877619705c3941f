"""How many CPU cores this process may really use: affinity and cgroup CPU quotas, not the host's core count.

``os.cpu_count()`` reports the host's cores. Inside a container started with ``docker --cpus 2`` (cgroup quota,
``cpu.max`` in cgroup v2 or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1) or pinned with ``taskset`` /
``--cpuset-cpus`` (affinity), running that many threads oversubscribes the CPU. :func:`usable_cpus` is the
minimum of the affinity set and the quota (rounded up, at least 1); every place that sets torch threads or a
number of worker processes uses it.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """Cores in this process's affinity set (``os.cpu_count()`` where affinity is not available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _own_cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """``controller -> path`` from ``/proc/self/cgroup`` (v2: controller ``""``); empty when unreadable."""
    paths: dict[str, str] = {}
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            paths.setdefault(controller, parts[2])
    return paths


def _candidates(root: Path, relative: str | None) -> list[Path]:
    """The process's own cgroup folder and its ancestors up to ``root`` (the quota may be set on a parent)."""
    folders = []
    if relative:
        folder = root / relative.lstrip("/")
        while True:
            folders.append(folder)
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    if root not in folders:
        folders.append(root)
    return folders


def _v2_quota(root: Path, relative: str | None) -> float | None:
    limits = []
    for folder in _candidates(root, relative):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    return min(limits) if limits else None


def _v1_quota(root: Path, relative: str | None) -> float | None:
    limits = []
    for base in (root / "cpu,cpuacct", root / "cpu"):
        if not base.is_dir():
            continue
        for folder in _candidates(base, relative):
            try:
                quota = float((folder / "cpu.cfs_quota_us").read_text().strip())
                period = float((folder / "cpu.cfs_period_us").read_text().strip())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
        if limits:
            break
    return min(limits) if limits else None


def cgroup_cpu_limit(root: str | Path = CGROUP_ROOT, proc_self_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPU quota in cores (e.g. 1.5) from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, None if unlimited.

    ``root`` is the cgroup mount (a parameter so tests can pass a fake tree); the process's own cgroup (from
    ``proc_self_cgroup``) and its ancestors are searched, the tightest quota wins.
    """
    root = Path(root)
    own = _own_cgroup_paths(Path(proc_self_cgroup))
    if (root / "cgroup.controllers").is_file() or (root / "cpu.max").is_file() or "" in own:
        limit = _v2_quota(root, own.get(""))
        if limit is not None:
            return limit
    return _v1_quota(root, own.get("cpu") or own.get("cpuacct"))


def usable_cpus(root: str | Path = CGROUP_ROOT, proc_self_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """Cores to size thread pools and worker counts by: min(affinity, ceil(cgroup quota)), at least 1."""
    cores = affinity_cpus()
    limit = cgroup_cpu_limit(root, proc_self_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)
