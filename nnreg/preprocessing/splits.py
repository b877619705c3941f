"""Five-fold cross-validation splits over the training images (``splits_final.json``, nnU-Net's format:
a list of ``{"train": [...], "val": [...]}``). Folds come from a fixed-seed permutation of the sorted case ids,
so they are reproducible; a ``splits_final.json`` the user put in the raw dataset folder is used instead."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from nnreg.utilities.errors import DatasetError
from nnreg.utilities.files import read_json

logger = logging.getLogger(__name__)

SEED = 12345


def make_splits(case_ids: list[str], n_folds: int = 5, seed: int = SEED) -> list[dict[str, list[str]]]:
    """K-fold splits (shuffled with ``seed``) over sorted ``case_ids``; needs at least ``n_folds`` cases."""
    ids = sorted(case_ids)
    if len(ids) < n_folds:
        raise DatasetError(f"{len(ids)} training images are too few for {n_folds} folds")
    order = np.random.RandomState(seed).permutation(len(ids))
    folds = np.array_split(order, n_folds)
    splits = []
    for k in range(n_folds):
        val = sorted(ids[i] for i in folds[k])
        splits.append({"train": sorted(set(ids) - set(val)), "val": val})
    return splits


def user_splits(raw_folder: Path, case_ids: list[str]) -> list[dict[str, Any]] | None:
    """The user's ``splits_final.json`` from the raw folder, checked against the training cases, or None."""
    path = raw_folder / "splits_final.json"
    if not path.is_file():
        return None
    splits = read_json(path)
    known = set(case_ids)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise DatasetError("must be a list of {\"train\": [...], \"val\": [...]} folds", path)
    for k, split in enumerate(splits):
        unknown = sorted((set(split["train"]) | set(split["val"])) - known)
        if unknown:
            raise DatasetError(f"fold {k} names {unknown[0]}, which is not a training case", path)
    logger.info("using the user's splits from %s", path)
    return splits
