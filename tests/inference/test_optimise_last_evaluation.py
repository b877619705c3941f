"""``optimise`` scores a stage's last velocity without a gradient and takes no Adam step after it (nothing would ever
evaluate that step's result): the returned velocity and step count are bitwise those of the plain loop that
differentiates every evaluation and steps after each, in one stage and across stages (each going on from the best
iterate of the one before, with a fresh Adam)."""
from __future__ import annotations

import math

import pytest
import torch

from nnreg.inference.instance_optimization import Stage, optimise, warmup_lr
from nnreg.inference.refinement_settings import InstanceOptimization
from nnreg.spatial import resize_field
from nnreg.utilities.optim import Adam

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    fixed = torch.nn.functional.avg_pool3d(torch.rand((1, 1, 16, 18, 14), generator=generator), 3, 1, 1)
    return fixed, torch.roll(fixed, (1, -1, 1), dims=(2, 3, 4))


def _reference(stages: list[Stage], velocity: torch.Tensor, settings: InstanceOptimization) -> tuple[torch.Tensor, int]:
    """The loop before the change: every evaluation differentiated and stepped; each stage goes on from its best."""
    steps_run = 0
    for stage in stages:
        if tuple(velocity.shape[2:]) != stage.grid:
            velocity = resize_field(velocity.detach(), stage.grid).contiguous()
        velocity = velocity.detach().clone().requires_grad_(True)
        optimizer = Adam([{"params": [velocity], "lr": settings.lr}])
        best, best_velocity = math.inf, None
        for _ in range(stage.steps):
            optimizer.param_groups[0]["lr"] = warmup_lr(settings, optimizer.steps)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = stage.loss(velocity, settings)
            if float(loss) < best:
                best, best_velocity = float(loss), velocity.detach().clone()
            loss.backward()
            optimizer.step()
            steps_run += 1
        velocity = best_velocity
    return velocity.detach(), steps_run


@pytest.mark.parametrize("grids", [[(8, 9, 7)], [(4, 5, 4), (8, 9, 7)]])
def test_optimise_returns_what_the_plain_loop_returns(grids: list[tuple[int, int, int]]) -> None:
    fixed, moving = _pair()
    settings = InstanceOptimization(steps=5, lr=0.3, integration_steps=2, lambda_reg=0.5, patience=100,
                                    warmup_steps=2)
    stages = [Stage(fixed, moving, 5, 5, grid, settings) for grid in grids]
    start = torch.zeros((1, 3, *grids[0]))
    expected, expected_steps = _reference(stages, start, settings)
    velocity, steps = optimise(stages, start.clone().requires_grad_(True), settings)
    assert steps == expected_steps == 5 * len(grids)
    assert torch.equal(velocity, expected) and float(velocity.abs().max()) > 0


def test_the_last_evaluation_of_each_stage_records_no_gradient(monkeypatch) -> None:
    fixed, moving = _pair()
    settings = InstanceOptimization(steps=3, lr=0.3, integration_steps=2, lambda_reg=0.5, patience=100)
    stages = [Stage(fixed, moving, 5, 3, grid, settings) for grid in [(4, 5, 4), (8, 9, 7)]]
    recorded: list[bool] = []
    original = Stage.loss

    def loss(self: Stage, velocity: torch.Tensor, options: InstanceOptimization):
        recorded.append(torch.is_grad_enabled())
        return original(self, velocity, options)

    monkeypatch.setattr(Stage, "loss", loss)
    optimise(stages, torch.zeros((1, 3, 4, 5, 4), requires_grad=True), settings)
    assert recorded == [True, True, False, True, True, False]
