"""The refinement's learning-rate warm-up: Adam's first steps after each (re)start are shorter."""
from __future__ import annotations

import pytest
import torch

from nnreg.inference import instance_optimization as io
from nnreg.inference.instance_optimization import Stage, optimise, warmup_lr
from nnreg.inference.refinement_settings import InstanceOptimization
from nnreg.utilities.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_the_schedule_ramps_linearly_then_holds() -> None:
    settings = InstanceOptimization(steps=10, lr=0.4, warmup_steps=3)
    assert [round(warmup_lr(settings, t), 6) for t in range(6)] == [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    assert warmup_lr(InstanceOptimization(steps=10, lr=0.4), 0) == 0.4     # off by default
    with pytest.raises(ConfigurationError, match="warmup_steps"):
        InstanceOptimization(warmup_steps=-1)
    assert InstanceOptimization.from_json({"steps": 5}).warmup_steps == 0   # plans written before the key


def _stages(settings: InstanceOptimization) -> list[Stage]:
    """Two stages of a textured pair, the second on a finer velocity grid (so Adam restarts there); 5 evaluations
    each, so 4 Adam steps (the last evaluation only scores)."""
    generator = torch.Generator().manual_seed(0)
    fixed = torch.nn.functional.avg_pool3d(torch.rand((1, 1, 20, 20, 20), generator=generator), 3, 1, 1)
    moving = torch.roll(fixed, 1, dims=2)
    return [Stage(fixed, moving, 5, 5, (5, 5, 5), settings), Stage(fixed, moving, 5, 5, (10, 10, 10), settings)]


def test_each_restart_of_adam_ramps_its_steps(monkeypatch) -> None:
    """The learning rate of every Adam step, and how far its first step moves the velocity: at most lr / (w + 1)
    after each restart (Adam's first step moves every component by about lr), the full lr without warm-up."""
    taken: list[tuple[float, float]] = []
    original = io.Adam.step

    def recording_step(self) -> None:
        parameter = self.param_groups[0]["params"][0]
        before = parameter.detach().clone()
        original(self)
        taken.append((self.param_groups[0]["lr"], float((parameter.detach() - before).abs().max())))

    monkeypatch.setattr(io.Adam, "step", recording_step)
    settings = InstanceOptimization(steps=4, lr=0.4, fine_steps=4, lambda_reg=0.1, patience=10, warmup_steps=3)
    optimise(_stages(settings), torch.zeros((1, 3, 5, 5, 5), requires_grad=True), settings)
    rates = [round(rate, 6) for rate, _ in taken]
    assert rates == [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4]
    assert taken[0][1] <= 0.1 + 1e-6 and taken[4][1] <= 0.1 + 1e-6
    assert taken[0][1] > 0.09                         # Adam's sign-like first step, at the warmed-up rate

    taken.clear()
    plain = InstanceOptimization(steps=4, lr=0.4, fine_steps=4, lambda_reg=0.1, patience=10)
    optimise(_stages(plain), torch.zeros((1, 3, 5, 5, 5), requires_grad=True), plain)
    assert [round(rate, 6) for rate, _ in taken] == [0.4] * 8
    assert taken[0][1] > 0.39


def test_the_finer_grid_stage_has_its_own_warmup_or_the_refinements() -> None:
    from nnreg.inference.finer_grid import FinerGridSettings

    refinement = InstanceOptimization(steps=10, warmup_steps=3)
    assert FinerGridSettings(warmup_steps=1).options(refinement).warmup_steps == 1
    assert FinerGridSettings().options(refinement).warmup_steps == 3
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigurationError, match="warmup_steps"):
            FinerGridSettings(warmup_steps=bad)
