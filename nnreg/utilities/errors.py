"""User-facing errors.

Anything a user can cause by bad input (a missing file, a malformed dataset.json, a wrong shape) raises
:class:`NnregError` with one line that names the file and the problem. The CLI turns it into that line on
stderr and a non-zero exit code; programming errors keep their traceback.
"""
from __future__ import annotations

from pathlib import Path


class NnregError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class DatasetError(NnregError):
    """A dataset folder or its dataset.json is unusable."""


class ConfigurationError(NnregError):
    """Paths, plans or options are missing or inconsistent."""
