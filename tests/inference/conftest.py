"""Fixtures of the predictor and refinement tests."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: tiny volumes gain nothing from more, and a busy machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
