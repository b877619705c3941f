"""Which images form a pair: random ordered training pairs, fixed lists of validation pairs.

Training pair ``k`` of rank ``r`` is a pure function of ``(seed, r, k)`` (its own ``numpy`` generator seeded with
that triple): two different images of the fold, either order equally likely, plus the seed of its augmentation.
Hence the stream does not depend on how many worker processes load it or in which order they finish, resuming
only needs the position ``k``, and DDP ranks draw disjoint, independent streams (the DistributedSampler idea
without an epoch-wide permutation, which for LUMIR's 3,384 images would have 11 million entries).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np


@dataclass(frozen=True)
class SampledPair:
    """One training sample: the fixed and moving case ids and the seed of its augmentation."""

    index: int
    fixed: str
    moving: str
    augmentation_seed: int


class PairSampler:
    """Random ordered pairs of two different cases, indexed by sample number, per (seed, rank)."""

    def __init__(self, case_ids: list[str], seed: int, rank: int = 0) -> None:
        if len(case_ids) < 2:
            raise ValueError(f"need at least two training images to form pairs, got {len(case_ids)}")
        self.case_ids = sorted(case_ids)
        self.seed = int(seed)
        self.rank = int(rank)

    def __call__(self, index: int) -> SampledPair:
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        n = len(self.case_ids)
        a = int(rng.integers(n))
        b = int(rng.integers(n - 1))
        b += b >= a
        return SampledPair(int(index), self.case_ids[a], self.case_ids[b], int(rng.integers(2 ** 31 - 1)))


def ordered_pairs(case_ids: list[str], limit: int = 0, seed: int = 0) -> list[tuple[str, str]]:
    """All ordered ``(fixed, moving)`` pairs of different cases; if ``limit`` > 0 and there are more, a
    reproducible subset of ``limit`` spread over the fixed images (a fixed-seed permutation)."""
    pairs = list(permutations(sorted(case_ids), 2))
    if limit <= 0 or len(pairs) <= limit:
        return pairs
    order = np.random.default_rng(seed).permutation(len(pairs))[:limit]
    return [pairs[i] for i in sorted(order)]
