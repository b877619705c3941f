"""Where the pairs to register come from: a dataset folder, a JSON or CSV pairs file, or one fixed/moving pair.

- A dataset folder with ``dataset.json``: its ``validation`` pairs, or another list of ``{fixed, moving}`` with
  ``pairs_key``. Paths are relative to the dataset root.
- A JSON file: a list of ``{"fixed": path, "moving": path}`` (or an object with such a list under ``pairs_key``).
- A CSV file: columns ``fixed,moving`` (header optional).
Relative paths in a pairs file are resolved against the file's folder. Every file is checked to exist before any
work starts, so a typo fails in one line and not after an hour.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnreg.dataset.learn2reg import load_dataset
from nnreg.utilities.errors import NnregError


@dataclass(frozen=True)
class PairSpec:
    """A pair of image files: ``moving`` is registered to ``fixed``."""

    fixed: Path
    moving: Path


def _resolve(base: Path, value: Any, where: str, source: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise NnregError(f"{where} is not a file path (got {value!r})", source)
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = base / (value.strip()[2:] if value.strip().startswith("./") else value.strip())
    if not path.is_file():
        raise NnregError(f"{where}: image {path} does not exist", source)
    return path


def _from_items(items: Any, base: Path, source: Path, key: str) -> list[PairSpec]:
    if not isinstance(items, list) or not items:
        raise NnregError(f"expected a non-empty list of {{fixed, moving}} pairs under '{key}'", source)
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "fixed" not in item or "moving" not in item:
            raise NnregError(f"pair {i} must have 'fixed' and 'moving'", source)
        pairs.append(PairSpec(_resolve(base, item["fixed"], f"pair {i} fixed", source),
                              _resolve(base, item["moving"], f"pair {i} moving", source)))
    return pairs


def pairs_from_json(path: Path, pairs_key: str = "validation") -> list[PairSpec]:
    """Pairs from a JSON list (or an object holding the list under ``pairs_key``)."""
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NnregError(f"not valid JSON ({exc})", path) from None
    if isinstance(raw, dict):
        raw = raw.get(pairs_key)
    return _from_items(raw, path.parent, path, pairs_key)


def pairs_from_csv(path: Path) -> list[PairSpec]:
    """Pairs from a CSV with columns ``fixed,moving`` (header optional)."""
    with path.open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["fixed", "moving"]:
        rows = rows[1:]
    items = []
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise NnregError(f"row {i + 1} needs two columns: fixed,moving", path)
        items.append({"fixed": row[0], "moving": row[1]})
    return _from_items(items, path.parent, path, "rows")


def pairs_from_dataset(folder: Path, pairs_key: str = "validation") -> list[PairSpec]:
    """The ``pairs_key`` pairs of a Learn2Reg dataset folder."""
    dataset = load_dataset(folder)
    pairs = [PairSpec(p.fixed.path, p.moving.path) for p in dataset.pairs(pairs_key)]
    if not pairs:
        raise NnregError(f"dataset.json has no pairs under '{pairs_key}' (choose a list with --pairs-key)",
                         dataset.json_path)
    return pairs


def collect_pairs(input_path: str | Path | None = None, pairs_key: str = "validation",
                  fixed: str | Path | None = None, moving: str | Path | None = None) -> list[PairSpec]:
    """The pairs to register from the ``-i`` input or from ``--fixed/--moving``; one-line errors."""
    if (fixed is None) != (moving is None):
        raise NnregError("--fixed and --moving go together")
    if fixed is not None and moving is not None:
        if input_path is not None:
            raise NnregError("give either -i INPUT or --fixed/--moving, not both")
        here = Path.cwd()
        return [PairSpec(_resolve(here, str(fixed), "--fixed", here), _resolve(here, str(moving), "--moving", here))]
    if input_path is None:
        raise NnregError("nothing to register: give -i (dataset folder, pairs .json or .csv) or --fixed/--moving")
    path = Path(input_path).expanduser()
    if path.is_dir():
        return pairs_from_dataset(path, pairs_key)
    if not path.is_file():
        raise NnregError("input does not exist", path)
    if path.suffix.lower() == ".json":
        return pairs_from_json(path, pairs_key)
    if path.suffix.lower() == ".csv":
        return pairs_from_csv(path)
    raise NnregError("input must be a dataset folder, a .json or a .csv pairs file", path)


def labels_for(pair: PairSpec, labels_folder: Path) -> Path:
    """The moving image's label map in ``labels_folder`` (same file name); error naming it when absent."""
    path = labels_folder / pair.moving.name
    if not path.is_file():
        raise NnregError(f"--warp-labels: no label map for moving image {pair.moving.name}", path)
    return path
