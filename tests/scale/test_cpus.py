"""Thread and worker counts respect CPU affinity and cgroup v1/v2 quotas (fake cgroup trees)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nnreg.utilities import cpus


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc_self_cgroup"
    path.write_text(text)
    return path


@pytest.fixture()
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_cgroup_v2_cpu_max_of_the_own_cgroup_and_its_parents(tmp_path: Path, eight_cores: None) -> None:
    root = tmp_path / "cgroup"
    (root / "docker" / "abc").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "cpu.max").write_text("max 100000\n")
    (root / "docker" / "cpu.max").write_text("300000 100000\n")           # docker --cpus 3 on the parent
    (root / "docker" / "abc" / "cpu.max").write_text("150000 100000\n")   # 1.5 on the container's own cgroup
    proc = _proc_cgroup(tmp_path, "0::/docker/abc\n")
    assert cpus.cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert cpus.usable_cpus(root, proc) == 2                             # rounded up
    (root / "docker" / "abc" / "cpu.max").write_text("max 100000\n")
    assert cpus.usable_cpus(root, proc) == 3
    # inside a container the own cgroup is mounted as the root ("0::/")
    assert cpus.usable_cpus(root / "docker", _proc_cgroup(tmp_path, "0::/\n")) == 3


def test_cgroup_v1_cfs_quota(tmp_path: Path, eight_cores: None) -> None:
    root = tmp_path / "cgroup"
    own = root / "cpu,cpuacct" / "job"
    own.mkdir(parents=True)
    (own / "cpu.cfs_quota_us").write_text("200000\n")
    (own / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc_cgroup(tmp_path, "4:memory:/job\n3:cpu,cpuacct:/job\n")
    assert cpus.cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    assert cpus.usable_cpus(root, proc) == 2
    (own / "cpu.cfs_quota_us").write_text("-1\n")                       # unlimited
    assert cpus.cgroup_cpu_limit(root, proc) is None
    assert cpus.usable_cpus(root, proc) == 8


def test_affinity_wins_when_smaller_and_nothing_is_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("400000 100000\n")
    assert cpus.usable_cpus(root, tmp_path / "missing") == 1
    assert cpus.usable_cpus(tmp_path / "nothing", tmp_path / "missing") == 1


def test_thread_and_worker_defaults_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from nnreg.inference import predictor
    from nnreg.training.data import loader

    monkeypatch.setattr(loader, "usable_cpus", lambda: 3)
    assert loader.default_num_workers(torch.device("cuda")) == 2
    assert loader.default_num_workers(torch.device("cpu")) == 1
    monkeypatch.setattr(predictor, "usable_cpus", lambda: 1)
    assert predictor.usable_cores() == 1
