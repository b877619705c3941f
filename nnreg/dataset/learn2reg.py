"""The Learn2Reg/LUMIR ``dataset.json``: an unpaired training pool and explicit validation pairs.

Only the structure is checked here (keys, paths, files present); image contents (dimensionality, NaN,
all-zero) are checked when the fingerprint reads every image. Paths in dataset.json are relative to the
dataset root and usually start with ``./``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnreg.dataset.naming import challenge_id_and_modality, ground_truth_path, strip_image_suffix
from nnreg.utilities.errors import DatasetError

logger = logging.getLogger(__name__)

CROSS_VALIDATION_FOLDS = 5   # the folds planning makes (nnreg.preprocessing.splits.make_splits), one image each
PAIR_IMAGES = 2              # a training pair needs two different images (also for fold all)


@dataclass(frozen=True)
class ImageEntry:
    """One image of the dataset, with its path relative to the root as written in dataset.json."""

    root: Path
    relative: str

    @property
    def path(self) -> Path:
        rel = self.relative[2:] if self.relative.startswith("./") else self.relative
        return self.root / rel

    @property
    def case_id(self) -> str:
        """File name without ``.nii.gz``: unique within a dataset, used for preprocessed files."""
        return strip_image_suffix(self.path.name)

    @property
    def challenge_id(self) -> str:
        return challenge_id_and_modality(self.path)[0]

    @property
    def modality(self) -> str:
        return challenge_id_and_modality(self.path)[1]

    def labels_path(self) -> Path:
        return ground_truth_path(self.root, self.relative, "labels")

    def landmarks_path(self) -> Path:
        return ground_truth_path(self.root, self.relative, "landmarks")


@dataclass(frozen=True)
class Pair:
    """A registration pair: the moving image is warped onto the fixed image's grid."""

    fixed: ImageEntry
    moving: ImageEntry


@dataclass
class Learn2RegDataset:
    """A parsed dataset.json with absolute paths resolved against the dataset root."""

    root: Path
    name: str
    raw: dict[str, Any]
    training: list[ImageEntry]
    validation: list[Pair]
    tensor_shape: tuple[int, ...] | None
    json_path: Path
    modalities: dict[str, str] = field(default_factory=dict)

    def pairs(self, key: str = "validation") -> list[Pair]:
        """Explicit ``{fixed, moving}`` pairs stored under ``key`` (``validation`` by default)."""
        if key == "validation":
            return list(self.validation)
        return _parse_pairs(self.root, self.raw, key, self.json_path)

    def has_training_labels(self) -> bool:
        return bool(self.training) and all(e.labels_path().is_file() for e in self.training)


def _entry(root: Path, value: Any, where: str, json_path: Path, must_exist: bool = True) -> ImageEntry:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where} is not a file path (got {value!r})", json_path)
    entry = ImageEntry(root, value)
    if must_exist and not entry.path.is_file():
        raise DatasetError(f"{where} lists {value}, which does not exist", json_path)
    return entry


def _parse_pairs(root: Path, raw: dict[str, Any], key: str, json_path: Path) -> list[Pair]:
    items = raw.get(key)
    if items is None:
        raise DatasetError(f"has no '{key}' list of pairs", json_path)
    if not isinstance(items, list):
        raise DatasetError(f"'{key}' must be a list of {{fixed, moving}} pairs", json_path)
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "fixed" not in item or "moving" not in item:
            raise DatasetError(f"'{key}'[{i}] must have 'fixed' and 'moving'", json_path)
        pairs.append(
            Pair(
                fixed=_entry(root, item["fixed"], f"'{key}'[{i}].fixed", json_path),
                moving=_entry(root, item["moving"], f"'{key}'[{i}].moving", json_path),
            )
        )
    return pairs


def dataset_json_path(root: Path) -> Path | None:
    """``root/dataset.json``, or else the one ``<NAME>_dataset.json`` Learn2Reg downloads ship
    (``LUMIR_dataset.json``); None when there is neither (or several candidates)."""
    if (root / "dataset.json").is_file():
        return root / "dataset.json"
    named = sorted(root.glob("*_dataset.json"))
    return named[0] if len(named) == 1 else None


def load_dataset(root: str | Path, training_files: bool = True) -> Learn2RegDataset:
    """Parse the dataset's JSON (see :func:`dataset_json_path`); raise :class:`DatasetError` naming the file
    and the problem. ``training_files=False``: the training images need not be there (an evaluation's
    ground-truth folder, like the official evaluator's, lists all of them but holds none)."""
    root = Path(root).absolute()   # keep a symlinked DatasetXXX_Name as the name
    if not root.is_dir():
        raise DatasetError("dataset folder does not exist", root)
    json_path = dataset_json_path(root)
    if json_path is None:
        raise DatasetError("missing dataset.json (a Learn2Reg dataset needs one, or a single "
                           "<NAME>_dataset.json as Learn2Reg downloads name it)", root / "dataset.json")
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", json_path) from None
    if not isinstance(raw, dict):
        raise DatasetError("must hold a JSON object", json_path)
    if "training" not in raw:
        raise DatasetError("lacks the 'training' list", json_path)
    if not isinstance(raw["training"], list) or not raw["training"]:
        raise DatasetError("'training' must be a non-empty list of {\"image\": path}", json_path)
    training = []
    for i, item in enumerate(raw["training"]):
        value = item.get("image") if isinstance(item, dict) else item
        training.append(_entry(root, value, f"'training'[{i}]", json_path, must_exist=training_files))
    ids = [e.case_id for e in training]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise DatasetError(f"'training' lists {dupes[0]} more than once", json_path)
    validation = _parse_pairs(root, raw, "validation", json_path) if "validation" in raw else []
    return Learn2RegDataset(
        root=root,
        name=root.name,
        raw=raw,
        training=training,
        validation=validation,
        tensor_shape=_tensor_shape(raw, json_path),
        json_path=json_path,
        modalities=_modalities(raw, json_path),
    )


def _tensor_shape(raw: dict[str, Any], json_path: Path) -> tuple[int, ...] | None:
    """``tensorImageShape``: ``{"0": [H, W, D]}`` (Learn2Reg's form), or absent; anything else is one line."""
    tis = raw.get("tensorImageShape")
    if tis is None or tis == {}:
        return None
    if not isinstance(tis, dict):
        raise DatasetError(f"'tensorImageShape' must be an object such as {{\"0\": [160, 224, 192]}}, got {tis!r}",
                           json_path)
    shape = next(iter(tis.values()))
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and not isinstance(n, bool)
                                                                 and n > 0 for n in shape)):
        raise DatasetError(f"'tensorImageShape' must give three positive integers, got {shape!r}", json_path)
    return tuple(shape)


def _modalities(raw: dict[str, Any], json_path: Path) -> dict[str, str]:
    """``modality``: ``{"0": "T1w", ...}`` (Learn2Reg's form), or absent; anything else is one line."""
    modality = raw.get("modality")
    if modality is None:
        return {}
    if not isinstance(modality, dict):
        raise DatasetError(f"'modality' must be an object such as {{\"0\": \"T1w\"}}, got {modality!r}", json_path)
    return {str(k): str(v) for k, v in modality.items()}


def check_training_pool(dataset: Learn2RegDataset) -> None:
    """Refuse, in one line naming the dataset.json, a training pool too small to plan: 5 images for the 5
    cross-validation folds, or 2 (one pair) with the user's own ``splits_final.json`` in the dataset folder."""
    count = len(dataset.training)
    if (dataset.root / "splits_final.json").is_file():
        if count < PAIR_IMAGES:
            raise DatasetError(f"{count} training image; nnreg needs at least {PAIR_IMAGES} (a pair), also with "
                               f"your own splits_final.json", dataset.json_path)
        return
    if count < CROSS_VALIDATION_FOLDS:
        raise DatasetError(
            f"{count} training image(s); nnreg needs at least {CROSS_VALIDATION_FOLDS}: planning splits them into "
            f"{CROSS_VALIDATION_FOLDS} cross-validation folds (training fold all needs only {PAIR_IMAGES}, but it "
            f"is planned with the same folds): add images, or put your own splits_final.json next to dataset.json",
            dataset.json_path)
