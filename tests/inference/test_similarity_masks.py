"""Masks restrict every deformable stage's similarity (``nnreg_register --fixed-mask/--moving-mask``): what the
images hold where the masks are zero (farther than a window and the displacement from any counted voxel) changes
nothing, bit for bit, while without the mask it does; a mask of ones is the unmasked loss; the moving mask moves
with the moving image."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nnreg.inference.finer_grid import FinerGridSettings, refine_on_finer_grid
from nnreg.inference.instance_optimization import Stage, refine_field
from nnreg.inference.masks import SimilarityMasks
from nnreg.inference.refinement_settings import InstanceOptimization

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

SHAPE = (32, 12, 12)
SETTINGS = InstanceOptimization(steps=6, lr=0.3, image_factor=1, grid_factor=1, ncc_window=3, integration_steps=2,
                                lambda_reg=0.5, patience=100)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    fixed = torch.nn.functional.avg_pool3d(torch.rand((1, 1, *SHAPE), generator=generator), 3, 1, 1) + 0.1
    return fixed, torch.roll(fixed, (1, -1, 1), dims=(2, 3, 4))


def _half(first: bool) -> torch.Tensor:
    """Ones over the first (or last) 12 rows along axis 0, zeros elsewhere."""
    mask = torch.zeros((1, 1, *SHAPE))
    mask[:, :, :12] = 1.0 if first else 0.0
    if not first:
        mask[:, :, -12:] = 1.0
    return mask


def _changed_far_away(image: torch.Tensor) -> torch.Tensor:
    """The image with new content in its last 6 rows (14 rows from the first 12)."""
    changed = image.clone()
    changed[:, :, -6:] = torch.rand((1, 1, 6, *SHAPE[1:]), generator=torch.Generator().manual_seed(2))
    return changed


@pytest.mark.parametrize("side", ["fixed", "moving"])
@pytest.mark.parametrize("edge_kappa, grid_factor", [(0.0, 1), (0.1, 1), (0.1, 2)])
def test_content_outside_the_mask_changes_nothing(side: str, edge_kappa: float, grid_factor: int) -> None:
    """Also with the edge-aware regulariser, whose weights see the fixed image (inside the mask only)."""
    fixed, moving = _pair()
    settings = replace(SETTINGS, edge_kappa=edge_kappa, grid_factor=grid_factor)
    masks = SimilarityMasks(**{side: _half(first=True)})
    zero = torch.zeros((1, 3, *SHAPE))
    pairs = {"fixed": (_changed_far_away(fixed), moving), "moving": (fixed, _changed_far_away(moving))}
    reference, _ = refine_field(fixed, moving, zero, settings, masks=masks)
    masked, _ = refine_field(*pairs[side], zero, settings, masks=masks)
    unmasked, _ = refine_field(*pairs[side], zero, settings)
    assert float(reference.abs().max()) > 0.01
    assert torch.equal(masked, reference)
    assert not torch.equal(unmasked, refine_field(fixed, moving, zero, settings)[0])


@pytest.mark.parametrize("parametrisation, lr, lambda_reg", [("velocity", 0.2, 0.5), ("displacement", 0.1, 2.0)])
def test_finer_grid_stages_honour_the_masks(parametrisation: str, lr: float, lambda_reg: float) -> None:
    fixed, moving = _pair()
    masks = SimilarityMasks(_half(first=True), _half(first=True))
    settings = FinerGridSettings(steps=4, parametrisation=parametrisation, lr=lr, lambda_reg=lambda_reg)
    velocity = torch.zeros((1, 3, 16, 6, 6))
    reference, _ = refine_on_finer_grid(fixed, moving, velocity, SETTINGS, settings, masks=masks)
    changed, _ = refine_on_finer_grid(_changed_far_away(fixed), _changed_far_away(moving), velocity, SETTINGS,
                                      settings, masks=masks)
    unmasked, _ = refine_on_finer_grid(_changed_far_away(fixed), _changed_far_away(moving), velocity, SETTINGS,
                                       settings)
    assert float(reference.abs().max()) > 0.01
    assert torch.equal(changed, reference)
    assert not torch.equal(unmasked, refine_on_finer_grid(fixed, moving, velocity, SETTINGS, settings)[0])


@pytest.mark.parametrize("similarity", ["lncc", "mind"])
def test_a_mask_of_ones_is_the_unmasked_loss(similarity: str) -> None:
    fixed, moving = _pair()
    settings = InstanceOptimization(steps=1, similarity=similarity, ncc_window=3)
    velocity = 0.3 * torch.randn((1, 3, *SHAPE), generator=torch.Generator().manual_seed(4))
    velocity[:, :, :2] = velocity[:, :, -2:] = 0.0        # no sample leaves the grid (a moving mask is 0 there)
    velocity[:, :, :, :2] = velocity[:, :, :, -2:] = velocity[..., :2] = velocity[..., -2:] = 0.0
    ones = torch.ones((1, 1, *SHAPE))
    plain = Stage(fixed, moving, 3, 1, SHAPE, settings).loss(velocity, settings)
    masked = Stage(fixed, moving, 3, 1, SHAPE, settings, masks=SimilarityMasks(ones, ones)).loss(velocity, settings)
    for a, b in zip(plain, masked):
        assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_the_moving_mask_is_taken_where_the_start_samples_it() -> None:
    """``on_fixed``: with the moving image shifted by a known field, a moving mask over the rows that the fixed image's
    rows 2-9 sample becomes a fixed weight over those rows."""
    shift = torch.zeros((1, 3, *SHAPE))
    shift[:, 0] = 4.0                                  # fixed row r samples moving row r + 4
    fixed_rows = torch.zeros((1, 1, *SHAPE))
    fixed_rows[:, :, 2:10] = 1.0
    on_fixed = SimilarityMasks(moving=torch.roll(fixed_rows, 4, dims=2)).on_fixed(shift)
    assert on_fixed.moving is None and torch.equal(on_fixed.fixed, fixed_rows)


def test_the_moving_mask_stays_where_the_stage_started() -> None:
    """A stage keeps the moving mask where its start put it (no gradient through the mask, which would shrink what
    it leaves out): from the identity, a moving mask refines exactly as the same mask given as the fixed one."""
    fixed, moving = _pair()
    mask = _half(first=True)
    zero = torch.zeros((1, 3, *SHAPE))
    as_moving, _ = refine_field(fixed, moving, zero, SETTINGS, masks=SimilarityMasks(moving=mask))
    as_fixed, _ = refine_field(fixed, moving, zero, SETTINGS, masks=SimilarityMasks(fixed=mask))
    assert float(as_moving.abs().max()) > 0.01 and torch.equal(as_moving, as_fixed)


def test_a_mask_off_its_images_grid_is_refused() -> None:
    fixed, moving = _pair()
    with pytest.raises(ValueError, match="moving mask's grid"):
        Stage(fixed, moving, 3, 1, SHAPE, SETTINGS, masks=SimilarityMasks(moving=torch.ones((1, 1, 4, 4, 4))))
    with pytest.raises(ValueError, match="fixed mask"):
        SimilarityMasks(fixed=torch.ones((4, 4, 4)))
