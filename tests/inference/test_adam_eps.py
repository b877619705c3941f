"""Adam's epsilon is a setting of the refinement (``adam_eps``) and of each finer-grid stage: at 1 mm the local NCC
gradients are mostly below the default 1e-8 (loss normalised by the voxel count), so epsilon decides how far a
component moves. Every Adam of the optimisation gets the stage's value; invalid values are one configuration error."""
from __future__ import annotations

import pytest
import torch

import nnreg.inference.instance_optimization as io
from nnreg.inference.finer_grid import FinerGridSettings, parse_finer_overrides, refine_on_finer_grid
from nnreg.inference.refinement_settings import InstanceOptimization, parse_overrides
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.optim import Adam

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _pair(shape: tuple[int, int, int] = (16, 18, 14)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    fixed = torch.nn.functional.avg_pool3d(torch.rand((1, 1, *shape), generator=generator), 3, 1, 1)
    return fixed, torch.roll(fixed, (1, -1, 1), dims=(2, 3, 4))


@pytest.fixture
def epsilons(monkeypatch) -> list[float]:
    """The eps of every Adam the optimisation constructs."""
    seen: list[float] = []

    class Recording(Adam):
        def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8) -> None:
            seen.append(eps)
            super().__init__(groups, betas, eps)

    monkeypatch.setattr(io, "Adam", Recording)
    return seen


def test_the_default_is_torch_adams_epsilon() -> None:
    assert InstanceOptimization().adam_eps == 1e-8
    assert FinerGridSettings().adam_eps is None


def test_refinement_adams_use_the_setting(epsilons: list[float]) -> None:
    fixed, moving = _pair()
    settings = InstanceOptimization(steps=3, fine_steps=3, lr=0.3, integration_steps=2, adam_eps=3e-7,
                                    fine_grid_factor=1)
    io.refine_field(fixed, moving, torch.zeros((1, 3, *fixed.shape[2:])), settings)
    assert len(epsilons) >= 2 and set(epsilons) == {3e-7}


@pytest.mark.parametrize("parametrisation", ["velocity", "displacement"])
def test_finer_grid_stages_use_their_own_or_the_refinements(epsilons: list[float], parametrisation: str) -> None:
    fixed, moving = _pair()
    refinement = InstanceOptimization(steps=3, lr=0.3, integration_steps=2, adam_eps=2e-6)
    velocity = torch.zeros((1, 3, 8, 9, 7))
    refine_on_finer_grid(fixed, moving, velocity, refinement,
                         FinerGridSettings(steps=3, parametrisation=parametrisation, adam_eps=5e-9))
    refine_on_finer_grid(fixed, moving, velocity, refinement,
                         FinerGridSettings(steps=3, parametrisation=parametrisation))
    assert epsilons[0] == 5e-9 and epsilons[-1] == 2e-6 and set(epsilons) == {5e-9, 2e-6}


def test_a_larger_epsilon_moves_a_small_gradient_less() -> None:
    """The update rule itself: the first step moves a component by lr * g / (|g| + eps)."""
    moves = []
    for eps in (1e-12, 1e-8):
        parameter = torch.zeros(2, requires_grad=True)
        optimizer = Adam([{"params": [parameter], "lr": 0.5}], eps=eps)
        parameter.grad = torch.tensor([1e-9, 1e-6])
        optimizer.step()
        moves.append(parameter.detach().abs())
    assert torch.allclose(moves[0], torch.tensor([0.5, 0.5]), rtol=1e-3)
    assert torch.allclose(moves[1], torch.tensor([0.5 / 11, 0.5 / 1.01]), rtol=1e-3)


def test_parsing_and_invalid_values() -> None:
    assert parse_overrides("adam_eps=1e-7") == {"adam_eps": 1e-7}
    assert parse_finer_overrides("adam_eps=5e-9") == {"adam_eps": 5e-9}
    assert parse_finer_overrides("adam_eps=none") == {"adam_eps": None}
    with pytest.raises(ConfigurationError, match="adam_eps"):
        InstanceOptimization(adam_eps=0.0)
    with pytest.raises(ConfigurationError, match="adam_eps"):
        FinerGridSettings(adam_eps=-1e-8)
    with pytest.raises(ConfigurationError, match="adam_eps"):
        parse_overrides("adam_eps=small")
