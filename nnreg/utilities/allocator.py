"""Keep freed memory in the process for reuse (glibc malloc), so that large tensors are not page-faulted in afresh.

Why: glibc serves each allocation above its mmap threshold (128 KiB at start, adapting up to 32 MiB) with a new
``mmap`` and hands it back to the kernel on ``free``; every new volume of a 1 mm pair (27 MiB per channel, dozens per
optimisation step) is then faulted in again one 4 KiB page at a time. On the 2-core development VM one 1 mm
``nnreg_register`` took 57 s with 6.5 million minor page faults and 15.5 s of system time; with ``mmap`` off and the
heap never trimmed, 46 s, 1.2 million faults, 3.1 s (documentation/benchmarks.md). jemalloc with decay off does the
same (the brief's measurement), but only through ``LD_PRELOAD`` before the process starts. The cost: freed blocks
stay in the heap, so the peak resident memory is higher (2.9 → 4.3 GB for that pair).

Used by the inference commands (``nnreg_register``, ``nnreg_predict``), not by training (forked data workers, runs
of days). ``NNREG_MALLOC=system`` keeps glibc's defaults; where the C library is not glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_THRESHOLD = 2**31 - 1       # the largest value mallopt takes: the heap's top is (almost) never given back
TOP_PAD = 64 << 20               # grow the heap 64 MiB beyond each request (fewer brk calls)

_applied = False


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc ``mallopt``); True when applied (once per
    process), False when ``NNREG_MALLOC=system`` or the C library is not glibc. Allocations a secondary arena cannot
    hold fall back to the main heap (glibc's ``arena_get_retry``), so nothing fails for want of ``mmap``."""
    global _applied
    if _applied:
        return True
    if os.environ.get("NNREG_MALLOC", "").strip().lower() == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version       # glibc only (musl has no mallopt tunables of this meaning)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    results = [mallopt(param, value) for param, value in      # each one tried, also after a refusal
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))]
    ok = all(result == 1 for result in results)
    if not ok:
        logger.debug("mallopt refused a setting; glibc's defaults may partly remain")
    _applied = ok
    return ok
