"""What glibc's malloc keeps resident for a sequence of tensor allocations and frees (CPU peak RSS).

CPU tensors come from ``malloc``. glibc serves a request of at least ``mmap_threshold`` bytes with its own
mapping, returned to the system at ``free``; smaller requests come from the heap, whose freed memory mostly stays
resident (reused by later requests, but not given back). The threshold is *dynamic*: freeing a mapped chunk
larger than the current threshold (up to 32 MiB on 64-bit) raises the threshold to that chunk's size, so after
the first large frees most tensors below 32 MiB move to the heap. The model keeps the mapped bytes exact and
charges the heap with its high-water mark (no trimming, no fragmentation): resident = mapped + heap peak so far.

``MALLOC_MMAP_THRESHOLD_`` (or ``mallopt``) fixes the threshold and turns the dynamic rule off; with a small
fixed threshold RSS follows the live tensors (documentation/planner.md compares both).
"""
from __future__ import annotations

MMAP_THRESHOLD_START = 128 * 1024
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


class GlibcMallocModel:
    """Resident bytes of tensors under glibc's default malloc settings."""

    def __init__(self, threshold: int = MMAP_THRESHOLD_START) -> None:
        self.threshold = threshold
        self.mapped = 0
        self.heap = 0
        self.heap_high_water = 0
        self._mapped_keys: dict[int, bool] = {}

    @property
    def resident(self) -> int:
        """Mapped bytes plus everything the heap ever held."""
        return self.mapped + self.heap_high_water

    def allocate(self, key: int, nbytes: int) -> None:
        mapped = nbytes >= self.threshold
        self._mapped_keys[key] = mapped
        if mapped:
            self.mapped += nbytes
        else:
            self.heap += nbytes
            self.heap_high_water = max(self.heap_high_water, self.heap)

    def free(self, key: int, nbytes: int) -> None:
        if self._mapped_keys.pop(key, False):
            self.mapped -= nbytes
            if self.threshold < nbytes <= MMAP_THRESHOLD_MAX:
                self.threshold = nbytes
        else:
            self.heap -= nbytes
