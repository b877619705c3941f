"""Shared fixtures: a tiny synthetic Learn2Reg dataset and the real shared data when it is present."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.synthetic import make_learn2reg_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path to ``../shared/data/<name>``, skipping the test (with the reason) when it is absent."""
    path = SHARED_DATA / name
    if not (path / "dataset.json").is_file():
        pytest.skip(f"shared data set {path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny dataset (6 training, 3 validation images of 32x40x32), built once per session."""
    return make_learn2reg_dataset(tmp_path_factory.mktemp("raw") / "Dataset901_Tiny")


def _torch_threads(count: int) -> Iterator[None]:
    """torch on ``count`` threads for one test, the previous count restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: tiny volumes gain nothing from more, and a busy machine loses a lot."""
    yield from _torch_threads(1)


@pytest.fixture()
def two_threads() -> Iterator[None]:
    """Two torch threads (the CI machine's cores): the threaded samplers split their calls in two."""
    yield from _torch_threads(2)


@pytest.fixture()
def nnreg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh nnReg_raw / nnReg_preprocessed / nnReg_results folders set in the environment."""
    folders = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in folders.items():
        path.mkdir()
        monkeypatch.setenv(f"nnReg_{name}", str(path))
    return folders
