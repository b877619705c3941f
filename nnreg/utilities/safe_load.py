"""Reading ``.pth`` files without running code: tensors and plain data only, never a full unpickle.

``torch.load(weights_only=True)`` rebuilds tensors, dicts, lists, tuples, strings, numbers, booleans and None and
refuses every other Python object; a full unpickle can run any code the file's author wrote, so nnreg never does
one, whatever the file. Numpy numbers (``np.float64`` and friends, which older nnreg versions
could leave in a checkpoint's curves) are rebuilt from their bytes and allowed too: they are data, not code.
A file that needs anything else is refused with :class:`UnsafeCheckpointError`, one line naming the file and the
first object it asked for; an unreadable file raises :class:`UnreadableCheckpointError`, so each caller can word
its own advice.
"""
from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from nnreg.utilities.errors import NnregError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>")


class UnsafeCheckpointError(NnregError):
    """A checkpoint holds Python objects other than tensors and plain data: reading it could run code.

    ``obj`` names the first object it asked for (e.g. ``posix.system``)."""

    def __init__(self, obj: str, path: str | Path) -> None:
        self.obj = obj
        super().__init__(f"refused: the checkpoint holds a Python object ({obj}) besides tensors and plain data, "
                         f"and unpickling it could run code, so nnreg does not read it (ask its author for a "
                         f"checkpoint of weights only)", path)


class UnreadableCheckpointError(NnregError):
    """A checkpoint is truncated, corrupt or not a torch file; ``reason`` is torch's error in one line."""

    def __init__(self, reason: str, path: str | Path) -> None:
        self.reason = reason
        super().__init__(f"cannot read checkpoint ({reason})", path)


def _numpy_number_globals() -> list[Any]:
    """What torch needs to rebuild numpy booleans, integers and floats (not object or structured dtypes)."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(code)) for code in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4",
                                                 "f8")]
    return [core.multiarray.scalar, np.dtype, *dtypes]


@contextlib.contextmanager
def _numpy_numbers_allowed() -> Iterator[None]:
    """Allow numpy numbers for the duration of one load (torch >= 2.5; older torch refuses them)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        yield
        return
    with safe_globals(_numpy_number_globals()):
        yield


def load_tensors_only(path: str | Path) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True`` (plus numpy numbers); never more.

    Raises :class:`UnsafeCheckpointError` for a file that asks for any other object (nothing of it was run) and
    :class:`UnreadableCheckpointError` for one that cannot be read."""
    path = Path(path)
    try:
        with _numpy_numbers_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        match = _GLOBAL.search(str(exc))
        if match:
            raise UnsafeCheckpointError(match.group(1) or match.group(2), path) from None
        raise UnreadableCheckpointError(f"UnpicklingError: {_first_line(exc)}", path) from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt/foreign files raise many types
        raise UnreadableCheckpointError(f"{type(exc).__name__}: {_first_line(exc)}", path) from None


def _first_line(exc: BaseException) -> str:
    """The informative line of a torch error (its weights_only preamble left out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                             "Check the documentation"))]
    return (useful or lines or [type(exc).__name__])[0]
