"""The refinement's local NCC computed on the fixed image's foreground box equals the whole grid's (value and
gradient), and the box warp equals the whole warp cropped (:class:`nnreg.inference.instance_optimization.Stage`)."""
from __future__ import annotations

import torch

from nnreg.inference.instance_optimization import InstanceOptimization, Stage, _foreground_box
from nnreg.losses import gradient_l2, local_ncc_loss
from nnreg.spatial import warp


def _images(shape: tuple[int, int, int] = (20, 22, 18)) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    fixed = torch.zeros(1, 1, *shape)
    moving = torch.zeros(1, 1, *shape)
    fixed[:, :, 6:13, 7:15, 5:12] = torch.rand(1, 1, 7, 8, 7) + 0.2
    moving[:, :, 5:14, 6:16, 4:12] = torch.rand(1, 1, 9, 10, 8) + 0.2
    return fixed, moving


def test_the_box_warp_equals_the_whole_warp_cropped() -> None:
    _, moving = _images()
    field = torch.randn(1, 3, *moving.shape[2:]) * 3
    box = (slice(2, 15), slice(5, 22), slice(0, 9))
    assert torch.equal(warp(moving, field, box=box), warp(moving, field)[:, :, box[0], box[1], box[2]])


def test_the_box_loss_and_gradient_equal_the_whole_grids() -> None:
    fixed, moving = _images()
    settings = InstanceOptimization(steps=1, lambda_reg=0.5)
    stage = Stage(fixed, moving, 5, 1, (10, 11, 9), settings)
    assert stage.box is not None
    assert stage.box[0] == slice(2, 17)                    # rows 6..12 grown by window - 1 = 4
    velocity = (torch.randn(1, 3, 10, 11, 9) * 0.8).requires_grad_(True)
    loss, similarity = stage.loss(velocity, settings)
    gradient, = torch.autograd.grad(loss, velocity)
    reference_velocity = velocity.detach().clone().requires_grad_(True)
    from nnreg.inference.instance_optimization import exponential_field
    field = exponential_field(reference_velocity, stage.size, settings.integration_steps)
    reference_similarity = local_ncc_loss(fixed, warp(moving, field), 5)
    reference = reference_similarity + settings.lambda_reg * gradient_l2(reference_velocity)
    reference_gradient, = torch.autograd.grad(reference, reference_velocity)
    assert float(reference_similarity.detach()) < -0.01                                   # the images do correlate
    torch.testing.assert_close(similarity.detach(), reference_similarity.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-4, atol=1e-7)


def test_no_box_without_a_zero_border() -> None:
    assert _foreground_box(torch.rand(1, 1, 8, 8, 8) + 0.1, 4) is None
    assert _foreground_box(torch.zeros(1, 1, 8, 8, 8), 4) is None
