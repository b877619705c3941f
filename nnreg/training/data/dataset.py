"""Training samples read from the preprocessed, memory-mapped blosc2 arrays.

A map-style dataset whose item ``k`` is training pair ``k`` of the :class:`PairSampler`: the loader asks for
consecutive indices, any worker can compute any of them, and the output for ``k`` never changes.
Each worker process opens the arrays itself (handles are not shared across processes) and keeps at most
``max_open`` of them open (least recently used closed first): every open blosc2 array holds a file descriptor,
and a LUMIR fold has ~2,700 training images, far above the common limit of 1,024 descriptors per process. Open
descriptors therefore stay bounded whatever the number of images, workers and epochs.
"""
from __future__ import annotations

import os
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnreg.preprocessing.storage import load_case
from nnreg.training.data.augmentation import ContrastRandomizer, IntensityAugmenter, SpatialAugmenter
from nnreg.training.data.pairs import PairSampler


MAX_OPEN_ARRAYS = 16   # per process; a pair needs 2, re-opening a closed array costs one JSON read and open()
SPATIAL_SEED_OFFSET = 1_000_003   # spatial draws use their own seeds, not the intensity transforms' ones
CONTRAST_SEED_OFFSET = 2_000_003  # and so do the contrast draws


class SampleLoadingError(RuntimeError):
    """A sample could not be made; the message carries the worker, the pair and the original traceback."""


class PairDataset(torch.utils.data.Dataset):
    """``dataset[k]`` = ``{"fixed", "moving": (1, H, W, D) float32 tensors, "index": k}``."""

    def __init__(self, folder: str | Path, sampler: PairSampler, augment: bool = True,
                 max_open: int = MAX_OPEN_ARRAYS, spatial: bool = False, contrast: bool = False) -> None:
        self.folder = Path(folder)
        self.sampler = sampler
        self.augment = augment
        self.spatial = spatial            # spatial augmentation (augmentation.SpatialAugmenter) before intensity
        self._spatial_augmenter: SpatialAugmenter | None = None
        self.contrast = contrast          # a random new contrast per image (augmentation.ContrastRandomizer)
        self.max_open = max(1, int(max_open))
        self._augmenter: IntensityAugmenter | None = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for spawned workers without open array handles or the augmenter (rebuilt on first use)."""
        state = dict(self.__dict__)
        state.update(_cache=OrderedDict(), _pid=-1, _augmenter=None, _spatial_augmenter=None)
        return state

    @property
    def num_open(self) -> int:
        """Arrays this process holds open now (at most ``max_open``)."""
        return len(self._cache) if self._pid == os.getpid() else 0

    def __len__(self) -> int:  # indices are unbounded; the loader's sampler decides which are drawn
        return 2 ** 62

    def _image(self, case_id: str) -> np.ndarray:
        if self._pid != os.getpid():      # a fresh worker: never reuse handles opened by another process
            self._cache, self._pid = OrderedDict(), os.getpid()
        if case_id in self._cache:
            self._cache.move_to_end(case_id)
        else:
            while len(self._cache) >= self.max_open:
                self._cache.popitem(last=False)   # dropping the last reference closes its file descriptor
            self._cache[case_id] = load_case(self.folder, case_id)[0]
        return np.asarray(self._cache[case_id][...], dtype=np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.sampler(index)
        try:
            fixed = self._image(pair.fixed)
            moving = self._image(pair.moving)
            if self.spatial:
                if self._spatial_augmenter is None:
                    self._spatial_augmenter = SpatialAugmenter()
                fixed, moving = self._spatial_augmenter(fixed, moving, pair.augmentation_seed + SPATIAL_SEED_OFFSET)
            if self.contrast:
                randomizer = ContrastRandomizer()
                fixed = randomizer(fixed, pair.augmentation_seed + CONTRAST_SEED_OFFSET)
                moving = randomizer(moving, pair.augmentation_seed + CONTRAST_SEED_OFFSET + 1)
            if self.augment:
                if self._augmenter is None:
                    self._augmenter = IntensityAugmenter()
                fixed = self._augmenter(fixed, pair.augmentation_seed)
                moving = self._augmenter(moving, pair.augmentation_seed + 1)
        except Exception as exc:
            info = torch.utils.data.get_worker_info()
            where = f"data-loader worker {info.id} (pid {os.getpid()})" if info else "the main process"
            raise SampleLoadingError(
                f"loading training pair {index} (fixed {pair.fixed}, moving {pair.moving}) from {self.folder} "
                f"failed in {where}:\n{traceback.format_exc()}") from exc
        return {"fixed": torch.from_numpy(fixed)[None], "moving": torch.from_numpy(moving)[None], "index": index}
