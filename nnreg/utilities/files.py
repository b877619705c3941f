"""Atomic writes: every output is written to a temporary name beside its target and renamed into place.

A process killed at any moment therefore leaves either the old file, the new file, or a stray
``*.tmp-*`` file that :func:`remove_stale_temporaries` cleans up; never a half-written target.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_MARKER = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    The temporary name keeps the target's suffixes (``x.nii.gz`` -> ``x.tmp-abc.nii.gz``) so writers that
    pick a format from the extension (SimpleITK, nibabel, blosc2) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    name = target.name
    stem, dot, suffixes = name.partition(".")
    fd, tmp = tempfile.mkstemp(prefix=f"{stem}{TMP_MARKER}", suffix=f"{dot}{suffixes}", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600; outputs get the permissions of a normally created file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, target: str | Path, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (sorted keys off: insertion order is the readable order)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, allow_nan=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, raising a one-line :class:`NnregError` that names the file on failure."""
    from nnreg.utilities.errors import NnregError

    path = Path(path)
    if not path.is_file():
        raise NnregError("file not found", path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NnregError(f"not valid JSON ({exc})", path) from None


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by an interrupted run below ``folder``; return how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(f"*{TMP_MARKER}*"):
        if p.is_file():
            p.unlink()
            removed += 1
    return removed
