"""CascadeRegNet and VoxelMorph: every variant runs forward and backward, starts at identity, and `compose` does
not fold where `add` does."""
from __future__ import annotations

import pytest
import torch

from nnreg.networks import CPU_VARIANTS, PAPER_VARIANTS, RegistrationOutput, build_network, default_architecture
from nnreg.spatial import jacobian_determinant
from tests.networks.conftest import TINY_SHAPE, fold_test_architecture, image_pair, tiny_architecture


@pytest.mark.parametrize(
    "name,narrow", [*[(n, True) for n in [*PAPER_VARIANTS, *CPU_VARIANTS]], ("backbone", False), ("VoxelMorph", False)]
)
def test_variant_forward_backward_and_identity_at_init(name, narrow):
    torch.manual_seed(0)
    model = build_network(tiny_architecture(name, narrow))
    moving, fixed = image_pair()
    out = model(moving, fixed)
    assert isinstance(out, RegistrationOutput)
    assert out.displacement.shape == (1, 3, *TINY_SHAPE)
    assert out.displacement.abs().max() < 1e-2  # untrained ≈ identity
    scales = [lv.scale for lv in out.levels]
    assert scales == sorted(scales, reverse=True)  # coarse → fine
    for lv in out.levels:
        grid = tuple(s // lv.scale for s in TINY_SHAPE)
        assert lv.velocity.shape == lv.displacement.shape == (1, 3, *grid)
        assert lv["velocity"] is lv.velocity
    loss = out.displacement.square().sum() + sum(lv.velocity.square().sum() for lv in out.levels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    with torch.no_grad():  # the in-place inference path computes the same field
        again = model(moving, fixed)
    torch.testing.assert_close(again.displacement, out.displacement, atol=1e-6, rtol=1e-4)


def test_levels_match_skip_levels():
    model = build_network(default_architecture(4, skip_levels=2, base_channels=8))
    out = model(*image_pair())
    assert [lv.scale for lv in out.levels] == [8, 4]
    assert out.displacement.shape == (1, 3, *TINY_SHAPE)


def test_last_level_displacement_is_the_output():
    model = build_network(default_architecture(4, base_channels=8))
    out = model(*image_pair())
    assert out.levels[-1].displacement is out.displacement
    assert out.levels[-1].scale == 1


def enlarged_coarse_heads(cascade: str, seed: int, scale: float = 3e4) -> torch.Tensor:
    """Random-init network with the last layers of the coarse heads ×scale: large, smooth coarse fields."""
    torch.manual_seed(seed)
    model = build_network(fold_test_architecture(cascade))
    with torch.no_grad():
        for level, head in model.heads.items():
            if level != "0":
                head.last.weight.mul_(scale)
        return model(*image_pair()).displacement


@pytest.mark.parametrize("seed", [0, 2])
def test_compose_does_not_fold_where_add_does(seed):
    composed, added = enlarged_coarse_heads("compose", seed), enlarged_coarse_heads("add", seed)
    assert composed.abs().max() > 4.0 and added.abs().max() > 4.0  # large deformations, not the identity
    assert (jacobian_determinant(composed) <= 0).sum() == 0
    assert (jacobian_determinant(added) <= 0).sum() > 0


def test_channels_last_inference_matches():
    torch.manual_seed(0)
    model = build_network(default_architecture(4, base_channels=8)).eval()
    with torch.no_grad():
        for head in model.heads.values():
            head.last.weight.mul_(1e3)
        moving, fixed = image_pair()
        reference = model(moving, fixed).displacement
        model = model.to(memory_format=torch.channels_last_3d)
        out = model(moving.to(memory_format=torch.channels_last_3d), fixed.to(memory_format=torch.channels_last_3d))
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(out.displacement, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # ~0.7 TFLOP: 10-45 s on 2 shared cores
def test_default_backbone_forward_at_80x112x96():
    torch.manual_seed(0)
    model = build_network(default_architecture(5))
    moving, fixed = image_pair((80, 112, 96))
    with torch.inference_mode():
        out = model(moving, fixed)
    assert out.displacement.shape == (1, 3, 80, 112, 96)
    assert len(out.levels) == 5 and out.levels[0].displacement.shape == (1, 3, 5, 7, 6)
    assert torch.isfinite(out.displacement).all()


def test_trained_toy_compose_model_stays_diffeomorphic():
    """A few optimiser steps on a synthetic pair (large smooth deformation): the loss drops, no folding."""
    import torch.nn.functional as F

    from nnreg.spatial import integrate_velocity, warp

    torch.manual_seed(0)
    shape = (16, 16, 16)
    g = torch.Generator().manual_seed(0)
    fixed = F.avg_pool3d(torch.rand(1, 1, *shape, generator=g), 5, 1, 2)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    v = F.interpolate(torch.randn(1, 3, 3, 3, 3, generator=g) * 4, size=shape, mode="trilinear", align_corners=False)
    moving = warp(fixed, integrate_velocity(v), padding="border")
    model = build_network(default_architecture(2, base_channels=4, flow_channels=8, flow_mid_channels=8))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_of(out):
        similarity = F.mse_loss(warp(moving, out.displacement, padding="border"), fixed)
        smooth = sum(d.square().mean() for lv in out.levels for d in torch.gradient(lv.velocity, dim=(2, 3, 4)))
        return similarity + 0.01 * smooth, similarity

    initial = F.mse_loss(moving, fixed).item()
    for _ in range(25):
        loss, similarity = loss_of(model(moving, fixed))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        out = model(moving, fixed)
    assert loss_of(out)[1].item() < 0.8 * initial
    assert out.displacement.abs().max() > 1.0
    assert (jacobian_determinant(out.displacement) <= 0).sum() == 0
