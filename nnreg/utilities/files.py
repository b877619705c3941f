"""Atomic writes: every output is written to a temporary name beside its target and renamed into place.

A process killed at any moment therefore leaves either the old file, the new file, or a stray
``*.tmp-*`` file that :func:`remove_stale_temporaries` cleans up; never a half-written target. The temporary is
fsynced before the rename and its folder after it, so a power loss cannot leave a renamed but empty file.

Temporaries carry their owner: ``<stem>.tmp-<host>-<pid>-<random>.<suffixes>`` (``host`` = 8 hex digits of the
host name's hash, ``random`` = 8 characters of ``[a-z0-9_]``, as :func:`tempfile.mkstemp` made them in earlier
versions). Several processes may write into one folder (e.g. ``nnreg_predict -num_parts``): the start-up cleanup
removes only files whose whole name has exactly this form, that lie directly in a folder the caller writes into,
and whose owning process is dead (this host, pid gone). Anything else is not nnreg's and is never touched: a user's
``notes.tmp-draft.txt``, a name without an owner, files in other subfolders, temporaries of live runs and of other
hosts sharing the folder.

The temporary is created with mode ``0o666`` by ``os.open``, so the kernel applies the process umask (and a
folder's default ACL) exactly as for a normally created file; the umask is never read or changed (changing it,
even for a moment, is a race with every other thread of the process).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator

TMP_MARKER = ".tmp-"
FULL_DISK_BYTES = 4 << 20      # a writer failing with less free space than this is reported as a full disk
# errors about the file being written, whatever file name the writer attached (shutil.copyfile names its source)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
# <stem without dots>.tmp-<8 hex host>-<pid>-<8 random [a-z0-9_]>[.<suffixes>]: the whole name, nothing else
_TEMPORARY = re.compile(r"^[^.]*\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[a-z0-9_]{8}(?:\..+)?$")
_CREATE_ATTEMPTS = 100


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


def _create_temporary(target: Path) -> Path:
    """Create an empty, new temporary beside ``target`` (``O_EXCL``: never an existing file), mode 0o666 & ~umask."""
    stem, dot, suffixes = target.name.partition(".")
    for _ in range(_CREATE_ATTEMPTS):
        path = target.parent / f"{stem}{TMP_MARKER}{owner_token()}-{secrets.token_hex(4)}{dot}{suffixes}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"no free temporary name beside {target}")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    The temporary name keeps the target's suffixes (``x.nii.gz`` -> ``x.tmp-<owner>-<random>.nii.gz``) so writers that
    pick a format from the extension (SimpleITK, nibabel, blosc2) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temporary(target)
    try:
        yield tmp_path
        if tmp_path.is_file():
            _fsync_path(tmp_path)
        os.replace(tmp_path, target)
        _fsync_path(target.parent)
    except OSError as exc:           # name the file being written (a writer's error may name none, or the source)
        if exc.filename is None or exc.errno in WRITE_ERRNOS:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except Exception as exc:        # torch.save, blosc2: their own errors when the disk is full
        if _disk_nearly_full(target.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _disk_nearly_full(folder: Path) -> bool:
    """Less than :data:`FULL_DISK_BYTES` free where a write just failed: the failure is taken for a full disk."""
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


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


def is_nnreg_temporary(name: str) -> bool:
    """Whether a file name has exactly the form :func:`atomic_path` gives its temporaries (owner included)."""
    return _TEMPORARY.match(name) is not None


def is_orphaned_temporary(path: Path) -> bool:
    """An nnreg temporary whose owner is gone: this host's, and its pid no longer runs.

    A name of another form (a user's file, a name without an owner) is not nnreg's: False. A temporary of another
    host may belong to a live run there: False."""
    match = _TEMPORARY.match(path.name)
    if match is None:
        return False
    return owner_is_gone(match.group("host"), match.group("pid"))


def owner_is_gone(host: str, pid: str) -> bool:
    """Whether the process ``pid`` of host token ``host`` is known to have ended: this host's, and not running
    (another host's cannot be checked from here: False)."""
    return host == host_token() and pid.isdigit() and not process_alive(int(pid))


def remove_stale_temporaries(folder: str | Path, subfolders: Iterable[str] = ("",)) -> int:
    """Delete orphaned nnreg temporaries (:func:`is_orphaned_temporary`) lying directly in ``folder`` and in
    ``folder / sub`` for each of ``subfolders`` (``""`` = ``folder`` itself): the folders the caller writes into,
    nothing deeper. Returns how many were deleted."""
    folder = Path(folder)
    removed = 0
    for sub in dict.fromkeys(subfolders):
        where = folder / sub if sub else folder
        if not where.is_dir():
            continue
        for p in where.iterdir():
            if TMP_MARKER in p.name and not p.is_symlink() and p.is_file() and is_orphaned_temporary(p):
                with contextlib.suppress(FileNotFoundError):   # its owner may finish it right now
                    p.unlink()
                    removed += 1
    return removed


def check_output_targets(targets: Iterable[tuple[str, Path]]) -> None:
    """Before any work: every ``(what, path)`` output can be written. Two outputs on one path, a target that is
    a folder, a parent that is a file, a folder that cannot be created or written: one-line
    :class:`~nnreg.utilities.errors.NnregError` naming the path (creates the missing parent folders)."""
    from nnreg.utilities.errors import NnregError

    seen: dict[Path, str] = {}
    for what, path in targets:
        key = Path(os.path.abspath(path))
        if key in seen:
            raise NnregError(f"{seen[key]} and {what} would both be written to this file; give them different "
                             f"paths", path)
        seen[key] = what
        if key.is_dir():
            raise NnregError(f"{what} is a folder, not a file", path)
        parent = key.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NnregError(f"cannot write {what}: a file is in the way of its folder", path) from None
        except OSError as exc:
            raise NnregError(f"cannot create the folder for {what} ({exc.strerror})", path) from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise NnregError(f"cannot write {what}: its folder is not writable", path)


@contextlib.contextmanager
def no_empty_folder_left(folder: Path) -> Iterator[None]:
    """Around a run that may create ``folder``: if the run fails, the folders it created and left empty are
    removed (:func:`remove_empty_folders`); a folder that existed before is never touched."""
    created = not folder.exists()
    try:
        yield
    except BaseException:
        if created:
            remove_empty_folders(folder)
        raise


def remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and its subfolders where they hold no file (deepest first); never a file, never a folder
    that holds one: what a failed run created and left empty."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()                       # only succeeds when empty
    with contextlib.suppress(OSError):
        folder.rmdir()
