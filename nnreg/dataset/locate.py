"""Find a dataset from what a user types: a numeric id (``500``), a full name (``Dataset500_OpenBrains80``),
or a path to a dataset folder anywhere."""
from __future__ import annotations

import os
import re
from pathlib import Path

from nnreg.utilities.errors import DatasetError

_NAME_RE = re.compile(r"^Dataset(\d{3})_.+$")


def dataset_id(name: str) -> int | None:
    """The 3-digit id of ``DatasetXXX_Name``, or None for a folder not named that way."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None


def looks_like_path(spec: str) -> bool:
    """Whether a dataset given on the command line is a path (``a/b``, ``./x``, ``~/x``, ``.``, ``..``) rather than
    an id or a bare name."""
    return os.sep in spec or "/" in spec or spec.startswith("~") or spec in (".", "..")


def dataset_folder_name(spec: str) -> str:
    """The folder name a path to a dataset folder names (``../raw/Dataset500_X/`` -> ``Dataset500_X``): the name its
    preprocessed data and results are stored under."""
    return Path(os.path.abspath(Path(spec).expanduser())).name


def resolve_dataset_name(spec: str | int, search_root: Path) -> str:
    """Map an id, a name or a path to a dataset folder to the ``DatasetXXX_Name`` folder name found in ``search_root``.

    A path stands for its folder's name (the raw dataset ``.../Dataset500_X`` is preprocessed into
    ``search_root/Dataset500_X``). Raises a one-line error for an unknown id, name or path and for two folders with
    the same id.
    """
    spec = str(spec)
    if spec.isdigit():
        wanted = int(spec)
        hits = sorted(p.name for p in search_root.iterdir() if p.is_dir() and dataset_id(p.name) == wanted) \
            if search_root.is_dir() else []
        if not hits:
            raise DatasetError(f"no dataset with id {wanted} (looked for Dataset{wanted:03d}_* here)", search_root)
        if len(hits) > 1:
            raise DatasetError(f"two datasets have id {wanted}: {', '.join(hits)}; rename one", search_root)
        return hits[0]
    if looks_like_path(spec):
        name = dataset_folder_name(spec)
        if not name or not (search_root / name).is_dir():
            raise DatasetError(f"no dataset named {name or spec} here (the folder name of {spec})", search_root)
        return name
    if not (search_root / spec).is_dir():
        raise DatasetError(f"no dataset named {spec} here", search_root)
    return spec


def find_raw_dataset(spec: str | int, raw_override: str | Path | None = None) -> Path:
    """The raw dataset folder for ``spec``.

    A numeric id is looked up in ``nnReg_raw`` (or ``raw_override``); a name is looked up there first and
    then taken as a path; a path to a folder is used as it is, so ``nnReg_raw`` is needed only for ids and names.
    """
    from nnreg.paths import raw_folder

    text = str(spec)
    if text.isdigit():
        root = raw_folder(raw_override)
        return root / resolve_dataset_name(text, root)
    as_path = Path(text).expanduser()
    if not looks_like_path(text) and not as_path.is_dir():
        root = raw_folder(raw_override)
        return root / resolve_dataset_name(text, root)
    if not as_path.is_dir():
        raise DatasetError("dataset folder does not exist", as_path)
    return as_path.absolute()
