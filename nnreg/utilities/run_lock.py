"""One run per output folder: a lock file that a second ``nnreg_train`` of the same fold, or a second
``nnreg_plan_and_preprocess`` of the same dataset, finds and refuses.

The lock ``<folder>/.nnreg_run.lock`` holds ``<host token> <pid>`` (:func:`nnreg.utilities.files.host_token`) and is
created with ``O_EXCL``, so of two runs started together exactly one gets it. A lock whose process is gone (this
host, pid not running: a run killed with SIGKILL, a crashed machine's reboot) is stale and taken over; a lock of a
live process, or of another host sharing the folder (which this host cannot check), is a one-line error naming it.
The process removes its lock when it exits, or when the block of :func:`holding_run_lock` ends.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path
from typing import Iterator

from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import host_token, owner_is_gone

LOCK_NAME = ".nnreg_run.lock"


def claim_run_lock(folder: Path, what: str) -> Path:
    """Take ``folder``'s run lock for this process (``what`` names the run in the error); returns the lock file."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    mine = _owner()
    for _ in range(2):                      # a stale lock is removed once, then claimed again
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read_owner(lock)
            if owner == mine:
                return lock
            host, _, pid = owner.partition(" ")
            if owner_is_gone(host, pid):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            where = f"process {pid} on this machine" if host == host_token() else f"a process on another machine " \
                                                                                   f"({owner or 'unknown'})"
            raise NnregError(f"{what} is being run by {where}; wait for it or stop it (if no run is going, delete "
                             f"this lock file)", lock) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(mine + "\n")
        atexit.register(_release, lock, mine)
        return lock
    raise NnregError(f"cannot take the run lock of {what}", lock)


def _owner() -> str:
    """What this process writes into a lock it holds: ``<host token> <pid>``."""
    return f"{host_token()} {os.getpid()}"


def _read_owner(lock: Path) -> str:
    try:
        return lock.read_text().strip()
    except OSError:
        return ""


def _release(lock: Path, mine: str) -> None:
    """Remove the lock at exit, if it is still this process's."""
    if _read_owner(lock) == mine:
        with contextlib.suppress(OSError):
            lock.unlink()


@contextlib.contextmanager
def holding_run_lock(folder: Path, what: str) -> Iterator[Path]:
    """``folder``'s run lock for the block (:func:`claim_run_lock`), released when the block ends however it ends, so
    that a failed run's clean-up finds the folder as the run left it."""
    lock = claim_run_lock(folder, what)
    try:
        yield lock
    finally:
        _release(lock, _owner())
