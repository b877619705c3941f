"""The finer-grid stage's ``"displacement"`` parametrisation (:mod:`nnreg.inference.finer_grid`): ``exp(v)`` is kept
and a 1 mm correction ``w`` is optimised, the field being ``exp(v) ∘ (id + w)``. Checked: the returned field against
that composition computed independently with ``scipy.ndimage.map_coordinates`` (voxel units, array axes, pull), the
stage lowering the loss and raising the similarity of the coarse field it starts from, the fold guard, the overrides'
syntax and the settings' checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.inference.finer_grid import FinerGridSettings, parse_finer_overrides, refine_on_finer_grid
from nnreg.inference.instance_optimization import InstanceOptimization, exponential_field
from nnreg.losses.ncc import local_ncc
from nnreg.utilities.errors import ConfigurationError
from tests.inference.helpers import textured_pair

SHAPE = (24, 20, 22)
REFINEMENT = InstanceOptimization(steps=1, lambda_reg=0.1, integration_steps=3)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A textured fixed image and a moving image moved by a fine warp (wavelength ~7 voxels)."""
    fixed, moving = textured_pair(SHAPE, 0, 0.7, 2, lambda g: np.stack([0.5 * np.sin(g[1] / 1.1),
                                                                        0.4 * np.cos(g[2] / 1.2),
                                                                        0.4 * np.sin(g[0] / 1.15)]))
    return torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None]


def _velocity() -> torch.Tensor:
    torch.manual_seed(1)
    return 0.2 * torch.randn(1, 3, 12, 10, 11)


def _compose_reference(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``inner(x) + outer(x + inner(x))`` for (3, H, W, D) voxel pull fields, ``outer`` sampled linearly with border
    clamping (the convention of :func:`nnreg.spatial.compose`)."""
    grid = np.mgrid[tuple(slice(0, n) for n in SHAPE)].astype(np.float64)
    points = grid + inner
    points = np.stack([np.clip(p, 0, n - 1) for p, n in zip(points, SHAPE)])
    return inner + np.stack([ndimage.map_coordinates(c, points, order=1, mode="nearest") for c in outer])


def _ncc(fixed: torch.Tensor, moving: torch.Tensor, field: np.ndarray) -> float:
    grid = np.mgrid[tuple(slice(0, n) for n in SHAPE)].astype(np.float64)
    warped = ndimage.map_coordinates(moving[0, 0].numpy(), grid + field, order=1, mode="constant")
    return float(local_ncc(fixed, torch.from_numpy(warped.astype(np.float32))[None, None], window=5).mean())


def test_the_field_is_the_coarse_transform_composed_with_the_correction_and_it_registers_finer() -> None:
    fixed, moving = _pair()
    velocity = _velocity()
    settings = FinerGridSettings(steps=12, lr=0.05, ncc_window=5, parametrisation="displacement", lambda_reg=0.5)
    field, report = refine_on_finer_grid(fixed, moving, velocity, REFINEMENT, settings)
    assert not report.kept_network and report.steps_run > 0 and report.final_loss < report.initial_loss
    assert report.velocity is not None and torch.equal(report.velocity, velocity)   # v is kept; w is the correction
    coarse = exponential_field(velocity, SHAPE, REFINEMENT.integration_steps)[0].double().numpy()
    correction = _compose_inverse_check(field[0].double().numpy(), coarse)
    expected = _compose_reference(coarse, correction)
    np.testing.assert_allclose(field[0].numpy(), expected, atol=2e-4)
    assert np.abs(correction).max() > 0.05
    assert _ncc(fixed, moving, field[0].numpy()) > _ncc(fixed, moving, coarse) + 0.05


def _compose_inverse_check(field: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Recover ``w`` from ``u = w + coarse(x + w)`` by fixed-point iteration (the stage does not return ``w``), so
    the composition itself can be recomputed independently."""
    w = field - coarse
    for _ in range(200):
        w = field - (_compose_reference(coarse, w) - w)
    return w


def test_zero_steps_and_a_folding_correction_keep_the_coarse_field() -> None:
    fixed, moving = _pair()
    velocity = _velocity()
    coarse = exponential_field(velocity, SHAPE, REFINEMENT.integration_steps)
    off, report = refine_on_finer_grid(fixed, moving, velocity, REFINEMENT,
                                       FinerGridSettings(steps=0, parametrisation="displacement"))
    assert report.steps_run == 0 and torch.equal(off, coarse)
    # no regulariser, a large step: the correction folds beyond the limit and is refused
    strict = InstanceOptimization(steps=1, lambda_reg=0.1, integration_steps=3, max_folding_percent=0.0)
    folded, refused = refine_on_finer_grid(fixed, moving, velocity, strict,
                                           FinerGridSettings(steps=10, lr=0.3, ncc_window=5,
                                                             parametrisation="displacement", lambda_reg=0.0))
    assert refused.kept_network and "folds" in refused.reason
    assert torch.equal(folded, coarse)


def test_overrides_and_checks() -> None:
    overrides = parse_finer_overrides("parametrisation=displacement, lambda_reg=8, steps=6, integration_steps=none")
    assert overrides == {"parametrisation": "displacement", "lambda_reg": 8.0, "steps": 6, "integration_steps": None}
    settings = FinerGridSettings().with_overrides(overrides)
    assert settings.parametrisation == "displacement" and settings.lambda_reg == 8.0 and settings.steps == 6
    assert parse_finer_overrides("finer_velocity=TRUE") == {"finer_velocity": True}
    for bad in ("steps", "nope=1", "steps=x", "finer_velocity=maybe"):
        with pytest.raises(ConfigurationError):
            parse_finer_overrides(bad)
    with pytest.raises(ConfigurationError, match="parametrisation"):
        FinerGridSettings(parametrisation="bspline")
    with pytest.raises(ConfigurationError, match="finer_velocity"):
        FinerGridSettings(parametrisation="displacement", finer_velocity=True)
    with pytest.raises(ConfigurationError, match="unknown finer-grid key"):
        FinerGridSettings.from_json({"step": 3})
