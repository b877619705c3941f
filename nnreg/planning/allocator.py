"""What glibc's malloc keeps resident for a sequence of tensor allocations and frees (CPU peak RSS).

CPU tensors come from ``malloc``. glibc serves a request of at least ``mmap_threshold`` bytes with its own
mapping, returned to the system at ``free``; smaller requests come from the heap. The threshold is *dynamic*:
freeing a mapped chunk larger than the current threshold (up to 32 MiB on 64-bit) raises it to that chunk's size
(and the trim threshold to twice that), so after the first large frees most tensors below 32 MiB move to the
heap. Freed heap memory stays resident — reused best-fit by later requests, coalesced with free neighbours — and
is only given back when the free chunk at the top of the heap exceeds the trim threshold. The model simulates
that on the heap's address range: resident = mapped bytes + the heap's current extent.

``MALLOC_MMAP_THRESHOLD_`` (or ``mallopt``) fixes the threshold and turns the dynamic rule off; with a small
fixed threshold RSS follows the live tensors (documentation/planner.md compares both).
"""
from __future__ import annotations

import bisect

MMAP_THRESHOLD_START = 128 * 1024
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
ALIGNMENT = 64                     # PyTorch's CPU allocator asks for 64-byte aligned blocks


class GlibcMallocModel:
    """Resident bytes of tensors under glibc's default malloc settings (single arena)."""

    def __init__(self, threshold: int = MMAP_THRESHOLD_START) -> None:
        self.threshold = threshold
        self.trim_threshold = threshold
        self.mapped = 0
        self.extent = 0                                   # top of the heap: everything below is resident
        self._free_starts: list[int] = []                 # free chunks below the top, sorted by address
        self._free_sizes: dict[int, int] = {}
        self._blocks: dict[int, tuple[bool, int, int]] = {}   # key -> (mapped, start, size)

    @property
    def resident(self) -> int:
        """Mapped bytes plus the heap's extent."""
        return self.mapped + self.extent

    def allocate(self, key: int, nbytes: int) -> None:
        """Place a block of ``nbytes`` for ``key``: its own mapping, or best fit on the heap, or the heap's top."""
        size = -(-max(nbytes, 1) // ALIGNMENT) * ALIGNMENT
        if size >= self.threshold:
            self.mapped += size
            self._blocks[key] = (True, 0, size)
            return
        fits = [s for s in self._free_starts if self._free_sizes[s] >= size]
        if fits:
            start = min(fits, key=lambda s: (self._free_sizes[s], s))      # best fit, lowest address on ties
            rest = self._free_sizes[start] - size
            self._remove_free(start)
            if rest:
                self._add_free(start + size, rest)
        else:
            start = self.extent
            last = self._free_starts[-1] if self._free_starts else None
            if last is not None and last + self._free_sizes[last] == self.extent:   # grow the free top chunk
                start = last
                self._remove_free(last)
            self.extent = start + size
        self._blocks[key] = (False, start, size)

    def free(self, key: int) -> None:
        """Release ``key``'s block: unmap it (raising the dynamic threshold) or return it to the heap."""
        entry = self._blocks.pop(key, None)
        if entry is None:
            return
        is_mapped, start, size = entry
        if is_mapped:
            self.mapped -= size
            if self.threshold < size <= MMAP_THRESHOLD_MAX:
                self.threshold, self.trim_threshold = size, 2 * size
            return
        i = bisect.bisect_left(self._free_starts, start)
        if i < len(self._free_starts) and self._free_starts[i] == start + size:      # merge the next free chunk
            following = self._free_starts[i]
            size += self._free_sizes[following]
            self._remove_free(following)
        if i > 0:                                                                     # merge the previous one
            previous = self._free_starts[i - 1]
            if previous + self._free_sizes[previous] == start:
                start, size = previous, size + self._free_sizes[previous]
                self._remove_free(previous)
        if start + size == self.extent and size > self.trim_threshold:               # trim the heap's top
            self.extent = start
            return
        self._add_free(start, size)

    def _add_free(self, start: int, size: int) -> None:
        bisect.insort(self._free_starts, start)
        self._free_sizes[start] = size

    def _remove_free(self, start: int) -> None:
        self._free_starts.pop(bisect.bisect_left(self._free_starts, start))
        del self._free_sizes[start]
