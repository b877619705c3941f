"""benchmarks/similarity_cost.py on a tiny grid: every similarity row is timed, and the three losses agree on what
they measure (~0 for MIND of identical images under the zero field)."""
from __future__ import annotations

import torch

from tests.benchmarks.conftest import load_benchmark

similarity_cost = load_benchmark("similarity_cost")


def test_every_similarity_is_timed_forward_and_backward() -> None:
    rows = similarity_cost.measure((10, 12, 8), repeats=1)
    assert set(rows) == {"lncc", "mind (images)", "mind (warped descriptor)"}
    assert all(r["forward_s"] > 0 and r["forward_backward_s"] > 0 for r in rows.values())


def test_the_timed_losses_are_the_real_ones() -> None:
    image = torch.rand((1, 1, 10, 12, 8), generator=torch.Generator().manual_seed(0))
    steps = similarity_cost._step_functions(image, image.clone())
    zero = torch.zeros((1, 3, 10, 12, 8))
    assert float(steps["mind (images)"](zero)) < 1e-10
    assert float(steps["mind (warped descriptor)"](zero)) < 1e-10
    assert float(steps["lncc"](zero)) < -0.9
