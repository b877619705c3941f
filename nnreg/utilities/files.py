"""Atomic writes: every output is written to a temporary name beside its target and renamed into place.

A process killed at any moment therefore leaves either the old file, the new file, or a stray
``*.tmp-*`` file that :func:`remove_stale_temporaries` cleans up; never a half-written target. The temporary is
fsynced before the rename and its folder after it, so a power loss cannot leave a renamed but empty file.

Temporaries carry their owner: ``<stem>.tmp-<host>-<pid>-<random>.<suffixes>`` (``host`` = 8 hex digits of the
host name's hash). Several processes may write into one folder (e.g. ``nnreg_predict -num_parts``): the start-up
cleanup removes only temporaries whose owning process is dead (same host, pid gone) or that carry no owner (older
nnreg versions); files of live runs, and of other hosts sharing the folder, are left alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_MARKER = ".tmp-"
_OWNER = re.compile(r"\.tmp-([0-9a-f]{8})-(\d+)-")


def host_token() -> str:
    """8 hex digits naming this host in temporary file names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def owner_token() -> str:
    """``<host>-<pid>``: who owns a temporary file (this process)."""
    return f"{host_token()}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk; folders on filesystems that refuse it are skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


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
    fd, tmp = tempfile.mkstemp(prefix=f"{stem}{TMP_MARKER}{owner_token()}-", suffix=f"{dot}{suffixes}",
                               dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600; outputs get the permissions of a normally created file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            _fsync_path(tmp_path)
        os.replace(tmp_path, target)
        _fsync_path(target.parent)
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


def is_orphaned_temporary(path: Path) -> bool:
    """A temporary whose owner is gone: no owner in its name, or this host's and the pid no longer runs."""
    match = _OWNER.search(path.name)
    if match is None:
        return True
    host, pid = match.group(1), int(match.group(2))
    return host == host_token() and not process_alive(pid)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries of interrupted runs below ``folder`` (never a live run's); return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(f"*{TMP_MARKER}*"):
        if p.is_file() and is_orphaned_temporary(p):
            with contextlib.suppress(FileNotFoundError):   # its owner may finish it right now
                p.unlink()
                removed += 1
    return removed
