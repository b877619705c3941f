"""Planning tests write the memory model's disk cache to a per-session temporary file, never to ~/.cache."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from nnreg.planning.memory import CACHE_ENV


@pytest.fixture(scope="session", autouse=True)
def memory_cache_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``nnReg_memory_cache`` at a fresh file for the whole session."""
    path = tmp_path_factory.mktemp("memory_cache") / "memory_model.json"
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old
