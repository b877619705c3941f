"""nnreg.utilities.allocator: after ``keep_freed_memory`` a large block freed and allocated again is reused, not
faulted in afresh (minor page faults of a fresh process around a torch tensor, not timed); ``NNREG_MALLOC=system`` keeps glibc's
behaviour; the inference commands apply it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import resource, sys
import torch
from nnreg.utilities.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
block = 64 * 2**20 // 4                      # 64 MiB of float32: above any mmap threshold of glibc
torch.ones(block).sum()                      # first touch: faults either way
faults = []
for _ in range(12):                          # the first few may take fresh heap (the freed block still split off)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(block).sum()                  # allocate, touch every page, free (torch: no huge pages)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults))
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "NNREG_MALLOC"}
    if env_value is not None:
        env["NNREG_MALLOC"] = env_value
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc's mallopt only")


@glibc
def test_a_freed_block_is_reused_without_page_faults() -> None:
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    applied, kept = _probe(None)
    system_applied, system = _probe("system")
    assert applied and not system_applied
    assert system > pages // 2          # glibc's default: the block is mmap'd and faulted in every time
    assert kept < pages // 20           # kept in the heap: reused


def test_the_inference_commands_keep_freed_memory() -> None:
    for module in ("register", "predict"):
        source = (ROOT / "nnreg" / "cli" / f"{module}.py").read_text()
        assert "keep_freed_memory()" in source, module
