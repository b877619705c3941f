"""The glibc malloc model: dynamic mmap threshold, best-fit reuse of freed heap memory, trimming the top."""
from __future__ import annotations

from nnreg.planning.allocator import MMAP_THRESHOLD_MAX, MMAP_THRESHOLD_START, GlibcMallocModel

MiB = 1024 * 1024


def test_dynamic_threshold_moves_later_tensors_to_the_heap() -> None:
    m = GlibcMallocModel()
    m.allocate(1, 8 * MiB)
    assert m.mapped == 8 * MiB and m.extent == 0
    m.free(1)
    assert m.threshold == 8 * MiB and m.resident == 0          # returned to the system at free
    m.allocate(2, 4 * MiB)                                       # now below the threshold: heap
    assert m.extent == 4 * MiB and m.mapped == 0
    m.allocate(3, 64 * MiB)
    m.free(3)
    assert m.threshold == 8 * MiB                                # chunks above 32 MiB do not move it
    assert MMAP_THRESHOLD_START < m.threshold <= MMAP_THRESHOLD_MAX


def test_freed_heap_memory_stays_resident_and_is_reused_best_fit() -> None:
    m = GlibcMallocModel(threshold=16 * MiB)
    for key, size in ((1, 2 * MiB), (2, 1 * MiB), (3, 3 * MiB), (4, 1 * MiB)):
        m.allocate(key, size)
    assert m.extent == 7 * MiB
    m.free(1)
    m.free(3)
    assert m.resident == 7 * MiB                                 # holes are not given back
    m.allocate(5, 2 * MiB)                                       # best fit: the 2 MiB hole, not the 3 MiB one
    m.allocate(6, 3 * MiB)
    assert m.extent == 7 * MiB
    m.allocate(7, 1 * MiB)                                       # no hole left: the heap grows
    assert m.extent == 8 * MiB


def test_free_top_of_the_heap_is_trimmed_above_the_trim_threshold() -> None:
    m = GlibcMallocModel(threshold=8 * MiB)
    m.trim_threshold = 2 * MiB
    m.allocate(1, 1 * MiB)
    m.allocate(2, 1 * MiB)
    m.allocate(3, 4 * MiB)
    m.free(2)
    m.free(3)                                                    # 5 MiB free at the top (coalesced) > 2 MiB
    assert m.extent == 1 * MiB
