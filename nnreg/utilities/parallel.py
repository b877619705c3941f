"""Run a function over items in worker processes with a progress bar; ``num_processes=0`` runs inline.

Each worker is a spawned process with its own pipe and gets **one task at a time**, so the parent always knows
which item every worker holds. The parent waits on the result pipes *and* the process sentinels: a worker that
dies without answering (killed, out of memory, segfault) is noticed at once and reported as one
:class:`WorkerDiedError` naming the stage, the item and how the process ended; the other workers are stopped.
Never a silent hang (``multiprocessing.Pool`` waits forever for a task whose worker was killed).

A worker's exception is re-raised in the parent unchanged (user errors keep their one-line message; others keep
the worker's traceback as their cause), never swallowed.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)


class WorkerDiedError(NnregError):
    """A worker process ended without returning its task's result (killed, out of memory, crashed)."""

    exit_code = 3


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the ``__cause__`` of the re-raised exception."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def how_it_ended(exitcode: int | None) -> str:
    """``killed by signal 9 (SIGKILL: often the out-of-memory killer)`` / ``exit code 1`` for a process."""
    if exitcode is None:
        return "ended"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ": often the out-of-memory killer" if -exitcode == signal.SIGKILL else ""
        return f"was killed by signal {-exitcode} ({name}{hint})"
    return f"exited with code {exitcode}"


def worker_died(stage: str, items: Iterable[str], detail: str = "") -> WorkerDiedError:
    """The one-line error for a dead worker of ``stage`` that held ``items``."""
    names = ", ".join(items) or "unknown"
    return WorkerDiedError(f"{stage}: a worker process {detail or 'died'} while processing {names}: "
                           f"re-run with fewer processes (0 runs the stage in this process and "
                           f"shows any error)")


def _worker(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """Serve tasks ``(index, item)`` until ``None`` or the parent goes away."""
    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                return
            if task is None:
                return
            index, item = task
            try:
                conn.send((index, True, fn(item)))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                text = traceback.format_exc()
                try:
                    conn.send((index, False, (exc, text)))
                except Exception:  # noqa: BLE001 - the exception itself does not pickle
                    conn.send((index, False, (RuntimeError(f"{type(exc).__name__}: {exc}"), text)))
    except (BrokenPipeError, KeyboardInterrupt):
        return


class _Slot:
    """One worker process, its pipe and the task it holds."""

    def __init__(self, ctx: Any, fn: Callable[[Any], Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, fn), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None

    def stop(self, force: bool) -> None:
        if not force and self.process.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(5)
        stop_processes([self.process], grace=5.0)
        self.conn.close()


def stop_processes(processes: Sequence[Any], grace: float) -> None:
    """SIGTERM every live process, then SIGKILL each one still alive ``grace`` seconds later (one deadline for all)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():  # terminate ignored
            process.kill()
            process.join()


def map_with_progress(fn: Callable[[Any], Any], items: Sequence[Any], num_processes: int, desc: str,
                      disable: bool | None = None, label: Callable[[Any], str] = str) -> list[Any]:
    """``[fn(x) for x in items]`` with a progress bar, in ``num_processes`` workers (0 = this process).

    ``desc`` names the stage and ``label(item)`` the item in a :class:`WorkerDiedError`.
    """
    items = list(items)
    bar_kwargs = {"total": len(items), "desc": desc, "disable": disable, "leave": False}
    if num_processes <= 0 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, **bar_kwargs)]
    ctx = mp.get_context("spawn")
    slots = [_Slot(ctx, fn) for _ in range(min(num_processes, len(items)))]
    results: list[Any] = [None] * len(items)
    queue = iter(range(len(items)))
    failed = True
    try:
        with tqdm(**bar_kwargs) as bar:
            remaining = len(items)
            for slot in slots:
                _give(slot, queue, items, desc, label)
            while remaining:
                busy = [s for s in slots if s.task is not None]
                ready = wait([s.conn for s in busy] + [s.process.sentinel for s in busy])
                for slot in busy:
                    if slot.conn in ready or slot.conn.poll():
                        try:
                            index, ok, value = slot.conn.recv()
                        except (EOFError, OSError):
                            slot.process.join(1)
                            raise worker_died(desc, [label(items[slot.task])],
                                              f"(pid {slot.process.pid}) {how_it_ended(slot.process.exitcode)}")
                        if not ok:
                            exc, text = value
                            raise exc from RemoteTraceback(f"\n\nin the worker process:\n{text}")
                        results[index] = value
                        slot.task = None
                        remaining -= 1
                        bar.update()
                        _give(slot, queue, items, desc, label)
                    elif slot.process.sentinel in ready:
                        slot.process.join(1)
                        raise worker_died(desc, [label(items[slot.task])],
                                          f"(pid {slot.process.pid}) {how_it_ended(slot.process.exitcode)}")
        failed = False
        return results
    finally:
        for slot in slots:
            slot.stop(force=failed)


def _give(slot: _Slot, queue: Iterable[int], items: list[Any], desc: str, label: Callable[[Any], str]) -> None:
    """Send the next task to an idle worker (nothing when the queue is empty).

    A worker killed before it could read its task breaks the pipe: that is the same dead worker, reported as such
    (click would otherwise take the ``BrokenPipeError`` for a closed terminal and exit 1 without a word)."""
    index = next(iter(queue), None)  # type: ignore[call-overload]
    if index is not None:
        slot.task = index
        try:
            slot.conn.send((index, items[index]))
        except (BrokenPipeError, ConnectionError, OSError):
            slot.process.join(1)
            raise worker_died(desc, [label(items[index])],
                              f"(pid {slot.process.pid}) {how_it_ended(slot.process.exitcode)}") from None
