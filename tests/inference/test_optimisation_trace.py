"""``optimise`` hands its own evaluations of the last stage to the finer-grid stages (``OptimisationTrace``) instead
of their evaluating the start and the result again: the traced values and fields are bitwise those of a separate
evaluation, also where the field is the optimised tensor itself (a displacement, no integration: Adam steps it in
place, so the trace must hold a copy), and the stages return what they returned with the extra evaluations."""
from __future__ import annotations

import pytest
import torch

from nnreg.inference import finer_grid
from nnreg.inference.finer_grid import FinerGridSettings, refine_on_finer_grid
from nnreg.inference.instance_optimization import OptimisationTrace, Stage, exponential_field, optimise
from nnreg.inference.refinement_settings import InstanceOptimization

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _pair(smoothing: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    fixed = torch.nn.functional.avg_pool3d(torch.rand((1, 1, 16, 18, 14), generator=generator), smoothing, 1,
                                           smoothing // 2)
    fixed[..., :3] = 0.0
    return fixed, torch.roll(fixed, (1, -1), dims=(2, 3))


@pytest.mark.parametrize("integration_steps, grid", [(2, (8, 9, 7)), (0, (16, 18, 14))])
def test_traced_evaluations_equal_separate_evaluations(integration_steps: int,
                                                        grid: tuple[int, int, int]) -> None:
    fixed, moving = _pair()
    settings = InstanceOptimization(steps=6, lr=0.3, integration_steps=integration_steps, lambda_reg=0.5,
                                    patience=100)
    stage = Stage(fixed, moving, 5, 6, grid, settings, keep_fields=True)
    start = torch.zeros((1, 3, *grid))
    trace = OptimisationTrace()
    best, steps = optimise([stage], start.clone().requires_grad_(True), settings, trace)
    assert steps == 6 and trace.first is not None and trace.best is not None
    with torch.no_grad():
        for velocity, evaluation in ((start, trace.first), (best, trace.best)):
            field = exponential_field(velocity, stage.size, integration_steps)
            loss, ncc = stage.field_loss(field, velocity, settings)
            assert evaluation.field is not None and torch.equal(evaluation.field, field)
            assert (evaluation.loss, evaluation.ncc) == (float(loss), float(ncc))
    assert trace.best.loss < trace.first.loss
    assert stage.last_field is None                 # the stage does not keep a field once optimise returns


@pytest.mark.parametrize("parametrisation", ["velocity", "displacement"])
def test_finer_stages_return_what_separate_evaluations_give(parametrisation: str, monkeypatch) -> None:
    """The stage with the trace against the same stage whose trace forgets the best field (so it evaluates the
    result again)."""
    fixed, moving = _pair(smoothing=5)
    velocity = torch.zeros((1, 3, 8, 9, 7))
    refinement = InstanceOptimization(steps=4, integration_steps=2, patience=100)
    settings = FinerGridSettings(steps=6, lr=0.2 if parametrisation == "velocity" else 0.1,
                                 finer_velocity=parametrisation == "velocity", parametrisation=parametrisation,
                                 lambda_reg=0.1 if parametrisation == "velocity" else 1.0)
    field, report = refine_on_finer_grid(fixed, moving, velocity, refinement, settings)

    class Forgetful(OptimisationTrace):
        def __setattr__(self, name, value) -> None:
            if name == "best":
                value = None if value is None else type(value)(value.loss, value.ncc, None)
            super().__setattr__(name, value)

    monkeypatch.setattr(finer_grid, "OptimisationTrace", Forgetful)
    again, report_again = refine_on_finer_grid(fixed, moving, velocity, refinement, settings)
    assert torch.equal(field, again)
    assert (report.initial_loss, report.final_loss, report.final_ncc, report.steps_run) == \
        (report_again.initial_loss, report_again.final_loss, report_again.final_ncc, report_again.steps_run)
    assert torch.equal(report.velocity, report_again.velocity)
    assert report.final_loss < report.initial_loss and not report.kept_network


def test_a_correction_given_its_start_field_returns_what_it_computes_itself() -> None:
    """``start_field`` (the velocity stage's result, ``exp(v)``) saves the correction integrating ``v`` again: the same
    field and report; a field on another grid is refused."""
    fixed, moving = _pair(smoothing=5)
    generator = torch.Generator().manual_seed(4)
    velocity = 0.5 * torch.nn.functional.avg_pool3d(torch.randn((1, 3, 8, 9, 7), generator=generator), 3, 1, 1)
    refinement = InstanceOptimization(steps=4, integration_steps=2, patience=100)
    settings = FinerGridSettings(steps=5, lr=0.1, parametrisation="displacement", lambda_reg=1.0)
    own, own_report = refine_on_finer_grid(fixed, moving, velocity, refinement, settings)
    given = exponential_field(velocity, tuple(fixed.shape[2:]), 2)
    field, report = refine_on_finer_grid(fixed, moving, velocity, refinement, settings, start_field=given)
    assert torch.equal(field, own) and not report.kept_network
    assert (report.initial_loss, report.final_loss) == (own_report.initial_loss, own_report.final_loss)
    zero = torch.zeros_like(given)             # another start field is used as given (not exp(v) recomputed)
    from_zero, zero_report = refine_on_finer_grid(fixed, moving, velocity, refinement, settings, start_field=zero)
    plain, plain_report = refine_on_finer_grid(fixed, moving, torch.zeros_like(velocity), refinement, settings)
    assert not torch.equal(from_zero, own)
    assert torch.equal(from_zero, plain) and zero_report.initial_loss == plain_report.initial_loss
    with pytest.raises(ValueError, match="start field"):
        refine_on_finer_grid(fixed, moving, velocity, refinement, settings, start_field=given[:, :, :-1])


@pytest.mark.parametrize("integration_steps", [2, 0])
def test_a_refused_velocity_stage_reports_its_start(integration_steps: int) -> None:
    """A velocity stage whose result folds is refused: its field is ``exp(start)`` and its report's velocity the
    start itself, not Adam's last iterate (Adam steps its parameter in place: the stage must hand it a copy, also
    where ``exp`` is the identity map of ``v``, integration 0 on the same grid)."""
    fixed, moving = _pair(smoothing=5)
    shape = tuple(int(n) for n in fixed.shape[2:])
    velocity = torch.zeros((1, 3, *shape))          # on the finer grid (finer_velocity), from the identity
    refinement = InstanceOptimization(steps=4, integration_steps=2, patience=100, max_folding_percent=0.0)
    settings = FinerGridSettings(steps=4, lr=0.6, finer_velocity=True, lambda_reg=0.0,
                                 integration_steps=integration_steps, parametrisation="velocity")
    field, report = refine_on_finer_grid(fixed, moving, velocity, refinement, settings)
    assert report.kept_network and "folds" in report.reason
    assert torch.equal(report.velocity, velocity)
    assert torch.equal(field, exponential_field(velocity, shape, integration_steps))
