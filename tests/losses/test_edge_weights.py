"""The edge-aware regulariser: per-axis weights from the fixed image (flat = 1, across an edge towards the floor,
scale-free), ``gradient_l2`` with weights against autograd through the textbook formula, and its use by the
refinement's stages (``edge_kappa``) and the finer-grid stage."""
from __future__ import annotations

import math

import pytest
import torch

from nnreg.inference.finer_grid import FinerGridSettings, parse_finer_overrides
from nnreg.inference.instance_optimization import Stage, refine_field
from nnreg.inference.refinement_settings import InstanceOptimization
from nnreg.losses import gradient_l2
from nnreg.losses.edge_weights import difference_weights, intensity_scale
from nnreg.utilities.errors import ConfigurationError


def _textbook(field: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    terms = []
    for axis, weight in zip((2, 3, 4), weights):
        n = field.shape[axis]
        diff = field.narrow(axis, 1, n - 1) - field.narrow(axis, 0, n - 1)
        terms.append((weight * diff * diff).mean())
    return sum(terms) / 3.0


def _step_image(height: float = 1.0) -> torch.Tensor:
    """Two flat halves along axis 0 (0.2 and 0.2 + height, times 100: units do not matter), a zero border."""
    image = torch.zeros(1, 1, 10, 8, 6)
    image[:, :, 1:5, 1:-1, 1:-1] = 20.0
    image[:, :, 5:-1, 1:-1, 1:-1] = 20.0 + 100.0 * height
    return image


def test_flat_regions_keep_weight_one_and_an_edge_falls_to_the_floor() -> None:
    image = _step_image(0.5)
    weights = difference_weights(image, kappa=0.1, floor=0.3)
    assert [tuple(w.shape) for w in weights] == [(1, 1, 9, 8, 6), (1, 1, 10, 7, 6), (1, 1, 10, 8, 5)]
    inside = (slice(None), slice(None), slice(2, 4), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(weights[0][inside], torch.ones_like(weights[0][inside]))   # flat: 1
    edge = weights[0][0, 0, 4, 3, 3]            # the difference between voxel 4 (20) and 5 (70)
    scale = intensity_scale(image)              # the foreground's 99th percentile: 70
    assert scale == pytest.approx(70.0)
    expected = 0.3 + 0.7 * math.exp(-(50.0 / (0.1 * scale)) ** 2)
    assert float(edge) == pytest.approx(expected, rel=1e-5) and float(edge) < 0.31
    assert float(torch.cat([w.flatten() for w in weights]).min()) >= 0.3 - 1e-7


def test_weights_do_not_depend_on_the_intensity_units() -> None:
    image = _step_image(0.05)
    a = difference_weights(image, kappa=0.1, floor=0.5)
    b = difference_weights(image * 1000.0, kappa=0.1, floor=0.5)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError):
        difference_weights(image, kappa=0.0, floor=0.5)
    with pytest.raises(ValueError):
        difference_weights(image, kappa=0.1, floor=0.0)


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (1, 3, 4, 9, 2)])
def test_weighted_value_and_gradient_equal_autograds(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    field = torch.randn(*shape, requires_grad=True)
    image = torch.rand(1, 1, *shape[2:])
    weights = difference_weights(image, kappa=0.2, floor=0.25)
    ours = gradient_l2(field, weights) * 1.3
    (grad_ours,) = torch.autograd.grad(ours, field)
    reference = _textbook(field, weights) * 1.3
    (grad_reference,) = torch.autograd.grad(reference, field)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-5, atol=1e-7)
    # weights of one are the unweighted regulariser (up to the order of summation)
    ones = tuple(torch.ones_like(w) for w in weights)
    torch.testing.assert_close(gradient_l2(field, ones), gradient_l2(field), rtol=1e-6, atol=0.0)
    with pytest.raises(ValueError, match="do not match"):
        gradient_l2(field, (weights[1], weights[0], weights[2]))


def test_voxels_outside_a_mask_shape_no_weight() -> None:
    """With ``inside``: differences reaching outside keep weight 1, the others are the formula with the scale of the
    inside voxels, and what lies outside changes nothing."""
    torch.manual_seed(3)
    image = torch.rand(1, 1, 8, 6, 5) * 50.0 + 10.0
    inside = torch.zeros(1, 1, 8, 6, 5, dtype=torch.bool)
    inside[:, :, :4, 1:] = True
    changed = image.clone()
    changed[:, :, 5:] = 1000.0                # far outside, and the largest values (they would set the scale)
    weights = difference_weights(image, kappa=0.1, floor=0.3, inside=inside)
    assert all(torch.equal(a, b) for a, b in zip(weights, difference_weights(changed, 0.1, 0.3, inside)))
    scale = float(torch.quantile(image[inside], 0.99))
    for axis, weight in zip((2, 3, 4), weights):
        n = image.shape[axis]
        both = inside.narrow(axis, 1, n - 1) & inside.narrow(axis, 0, n - 1)
        diff = image.narrow(axis, 1, n - 1) - image.narrow(axis, 0, n - 1)
        expected = 0.3 + 0.7 * torch.exp(-(diff / (0.1 * scale)) ** 2)
        assert torch.all(weight[~both] == 1.0) and bool(both.any())
        torch.testing.assert_close(weight[both], expected[both], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="inside mask"):
        difference_weights(image, 0.1, 0.3, inside=inside[:, :, 1:])


def test_a_jump_across_an_image_edge_costs_less_than_one_inside_a_flat_region() -> None:
    image = torch.full((1, 1, 10, 8, 6), 20.0)
    image[:, :, 5:] = 70.0                  # an edge plane between voxels 4 and 5 of axis 0
    weights = difference_weights(image, kappa=0.1, floor=0.2)
    across, inside = torch.zeros(1, 3, 10, 8, 6), torch.zeros(1, 3, 10, 8, 6)
    across[:, 0, 5:] = 1.0       # the field jumps where the image does (between voxels 4 and 5)
    inside[:, 0, 3:] = 1.0       # the same jump inside the lower half
    assert torch.equal(gradient_l2(across), gradient_l2(inside))
    assert float(gradient_l2(across, weights)) < 0.25 * float(gradient_l2(inside, weights))


def test_the_refinement_stages_use_the_weights_and_the_settings_are_checked() -> None:
    torch.manual_seed(1)
    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 16, 16, 16), 3, 1, 1)
    moving = torch.roll(fixed, 1, dims=2)
    plain = InstanceOptimization(steps=6, lr=0.2, image_factor=1, ncc_window=3, lambda_reg=1.0, patience=10)
    edged = InstanceOptimization(steps=6, lr=0.2, image_factor=1, ncc_window=3, lambda_reg=1.0, patience=10,
                                 edge_kappa=0.05, edge_floor=0.3)
    velocity = torch.randn(1, 3, 8, 8, 8) * 0.3
    a = Stage(fixed, moving, 3, 6, (8, 8, 8), plain)
    b = Stage(fixed, moving, 3, 6, (8, 8, 8), edged)
    assert a.edge_weights is None and b.edge_weights is not None
    loss_a, ncc_a = a.loss(velocity, plain)
    loss_b, ncc_b = b.loss(velocity, edged)
    assert torch.equal(ncc_a, ncc_b) and float(loss_b) < float(loss_a)   # only the regulariser is weighted down
    refined, report = refine_field(fixed, moving, torch.zeros(1, 3, 16, 16, 16), edged)
    assert report.final_loss < report.initial_loss and not report.kept_network
    for bad in ({"edge_kappa": -0.1}, {"edge_floor": 0.0}, {"edge_floor": 1.5}):
        with pytest.raises(ConfigurationError, match="edge_"):
            InstanceOptimization(**bad)


def test_the_finer_grid_stage_takes_the_refinements_kappa_unless_it_sets_its_own() -> None:
    """``nnreg_predict``'s finer stage sets κ 0.1 whatever the refinement's; ``nnreg_register``'s 1 mm stages take
    their deformable stage's (None), measured without the weights."""
    from nnreg.registration.pipeline import FINER_CORRECTION, FINER_GRID

    refinement = InstanceOptimization(steps=5, edge_kappa=0.3)
    assert FinerGridSettings().options(refinement).edge_kappa == 0.1
    assert FinerGridSettings().options(InstanceOptimization(steps=5)).edge_kappa == 0.1
    assert FinerGridSettings(edge_kappa=None).options(refinement).edge_kappa == 0.3
    assert FinerGridSettings(edge_kappa=0.0).options(refinement).edge_kappa == 0.0
    for stage in (FINER_GRID, FINER_CORRECTION):
        assert stage.edge_kappa is None and stage.options(refinement).edge_kappa == 0.3
        assert stage.options(InstanceOptimization(steps=5)).edge_kappa == 0.0
    assert parse_finer_overrides("edge_kappa=0.2") == {"edge_kappa": 0.2}
    assert parse_finer_overrides("edge_kappa=none") == {"edge_kappa": None}
    with pytest.raises(ConfigurationError, match="edge_kappa"):
        FinerGridSettings(edge_kappa=-1.0)


def test_a_refused_edge_aware_refinement_falls_back_to_the_plain_regulariser(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``edge_kappa > 0`` a refused field (here: every edge-aware one) is refined again without the weights, so
    an identity start does not come back as a zero field; without the weights a refusal keeps the start."""
    import nnreg.inference.instance_optimization as io

    torch.manual_seed(2)
    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 16, 16, 16), 3, 1, 1)
    moving = torch.roll(fixed, 1, dims=2)
    zero = torch.zeros(1, 3, 16, 16, 16)
    plain = InstanceOptimization(steps=6, lr=0.2, image_factor=1, ncc_window=3, lambda_reg=1.0, patience=10)
    edged = InstanceOptimization(steps=6, lr=0.2, image_factor=1, ncc_window=3, lambda_reg=1.0, patience=10,
                                 edge_kappa=0.05, edge_floor=0.3)
    original = io.refusal
    monkeypatch.setattr(io, "refusal", lambda refined, network, loss, network_loss, settings, folding=None:
                        "it folds (test)" if settings.edge_kappa > 0 else original(refined, network, loss,
                                                                                  network_loss, settings, folding))
    expected, expected_report = refine_field(fixed, moving, zero, plain)
    refined, report = refine_field(fixed, moving, zero, edged)
    assert report.edge_fallback and not report.kept_network and float(refined.abs().max()) > 0
    assert torch.equal(refined, expected) and report.final_loss == expected_report.final_loss
    assert report.steps_run > expected_report.steps_run                  # both refinements' steps are counted
    monkeypatch.setattr(io, "refusal", lambda *args, **kwargs: "it folds (test)")
    kept, kept_report = refine_field(fixed, moving, zero, edged)
    assert kept_report.kept_network and torch.equal(kept, zero)          # refused twice: the start, as before


def test_the_fallback_keeps_the_callers_settings_after_a_mind_refinement_with_a_remap_stage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MIND-SSC stages carry no weights, the remap stage (local NCC) does: a refused result is refined again with the
    caller's MIND settings (not the remap stage's), so the retry ends in a remap stage too; with no weighted stage
    at all (no remap stage) a refusal keeps the start at once."""
    import nnreg.inference.instance_optimization as io

    torch.manual_seed(3)
    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 16, 16, 16), 3, 1, 1)
    moving = 1.0 - torch.roll(fixed, 1, dims=2)            # another contrast
    zero = torch.zeros(1, 3, 16, 16, 16)
    mind = InstanceOptimization(steps=4, lr=0.2, image_factor=1, lambda_reg=0.3, patience=10, similarity="mind",
                                remap_steps=3, edge_kappa=0.05)
    seen: list[InstanceOptimization] = []
    monkeypatch.setattr(io, "refusal", lambda refined, network, loss, network_loss, settings, folding=None:
                        seen.append(settings) or ("it folds (test)" if settings.edge_kappa > 0 else ""))
    refined, report = refine_field(fixed, moving, zero, mind)
    assert report.edge_fallback and report.remapped and not report.kept_network
    assert [s.similarity for s in seen] == ["lncc", "lncc"] and seen[-1].edge_kappa == 0.0
    assert seen[-1].lambda_reg == mind.remap_lambda_reg      # the retry's remap stage, from the MIND settings
    no_remap = InstanceOptimization(steps=4, lr=0.2, image_factor=1, lambda_reg=0.3, patience=10, similarity="mind",
                                    edge_kappa=0.05)
    monkeypatch.setattr(io, "refusal", lambda *args, **kwargs: "it folds (test)")
    kept, kept_report = refine_field(fixed, moving, zero, no_remap)
    assert kept_report.kept_network and not kept_report.edge_fallback and torch.equal(kept, zero)
