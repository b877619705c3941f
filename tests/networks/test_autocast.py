"""A network forward under bf16 autocast returns float32 fields, integrated and composed in float32 (issue 21).

CPU autocast with ``dtype=torch.bfloat16`` stands in for the trainer's CUDA autocast: the convolutions run in bf16,
every field the network returns must be float32 and equal to the float32 integration / composition of the
velocities it predicted. The loss of such an output is float32 and the same inside and outside autocast.
"""
from __future__ import annotations

import pytest
import torch

from nnreg.losses import DeepSupervisedRegistrationLoss
from nnreg.networks import RegistrationOutput, build_network, default_architecture
from nnreg.spatial import compose, integrate_velocity, upsample_field
from tests.networks.conftest import TINY_LEVELS, image_pair, tiny_architecture


def _bf16_forward(model: torch.nn.Module) -> tuple[RegistrationOutput, tuple[torch.Tensor, torch.Tensor]]:
    moving, fixed = image_pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(moving, fixed), (moving, fixed)


def _enlarge_heads(model: torch.nn.Module, scale: float = 3e4) -> None:
    """Last layers ×scale: velocities of a few voxels, where a bf16 grid is visibly wrong."""
    with torch.no_grad():
        for head in model.heads.values():
            head.last.weight.mul_(scale)


@pytest.mark.parametrize("cascade", ["compose", "add"])
def test_cascade_under_bf16_autocast_integrates_and_composes_in_float32(cascade: str) -> None:
    torch.manual_seed(0)
    model = build_network(default_architecture(TINY_LEVELS, base_channels=8, cascade=cascade))
    _enlarge_heads(model)
    out, (moving, fixed) = _bf16_forward(model)
    assert out.displacement.dtype == torch.float32
    assert all(lv.velocity.dtype == lv.displacement.dtype == torch.float32 for lv in out.levels)
    # the same cascade recomputed in float32 outside autocast from the velocities the network predicted
    u: torch.Tensor | None = None
    for level in out.levels:
        phi = integrate_velocity(level.velocity.detach(), model.integration_steps)
        if u is None:
            u = phi
        else:
            u = compose(upsample_field(u), phi) if cascade == "compose" else upsample_field(u) + phi
        torch.testing.assert_close(level.displacement.detach(), u, atol=1e-5, rtol=0)
    assert float(out.displacement.detach().abs().max()) > 2.0              # a real deformation, not the identity
    # the loss path: float32, the same value inside and outside autocast, and it back-propagates
    loss_fn = DeepSupervisedRegistrationLoss(ncc_window=5)
    loss, _ = loss_fn(moving, fixed, out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_in_autocast, _ = loss_fn(moving, fixed, out)
    assert loss.dtype == loss_in_autocast.dtype == torch.float32
    assert float(loss_in_autocast.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bilateral_filtered_velocity_is_float32_under_bf16_autocast() -> None:
    torch.manual_seed(1)
    model = build_network(tiny_architecture("backbone+BF"))
    model.bilateral_on = "velocity"
    _enlarge_heads(model)
    out, _ = _bf16_forward(model)
    assert out.displacement.dtype == torch.float32
    finest = out.levels[-1]
    assert finest.velocity.dtype == torch.float32
    previous = upsample_field(out.levels[-2].displacement.detach())
    want = compose(previous, integrate_velocity(finest.velocity.detach(), model.integration_steps))
    torch.testing.assert_close(finest.displacement.detach(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [0, 7])
def test_voxelmorph_under_bf16_autocast_returns_a_float32_field(steps: int) -> None:
    torch.manual_seed(2)
    arch = tiny_architecture("VoxelMorph")
    arch["kwargs"]["integration_steps"] = steps
    model = build_network(arch)
    with torch.no_grad():
        model.flow.weight.mul_(3e4)
    out, _ = _bf16_forward(model)
    level = out.levels[-1]
    assert out.displacement.dtype == level.velocity.dtype == torch.float32
    torch.testing.assert_close(out.displacement.detach(), integrate_velocity(level.velocity.detach(), steps),
                               atol=1e-5, rtol=0)


def test_the_flow_head_predicts_a_float32_velocity_under_autocast() -> None:
    """The velocity layer runs in float32: under bf16 autocast it equals the float32 layer applied to the (bf16)
    features, not a bf16 rounding of it."""
    from nnreg.networks.flow_head import FlowHead

    head = FlowHead(8, 8, 6)
    torch.nn.init.normal_(head.last.weight, std=0.3)
    x = torch.randn((1, 8, 6, 7, 5), generator=torch.Generator().manual_seed(0))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        velocity = head(x)
        hidden = x
        for layer in list(head)[:-1]:
            hidden = layer(hidden)
    assert velocity.dtype == torch.float32
    expected = head.last(hidden.float())
    assert torch.allclose(velocity, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["backbone", "VoxelMorph"])
def test_the_velocity_layer_of_a_whole_network_runs_in_float32_under_autocast(name: str) -> None:
    """Not only a FlowHead called on its own: the cascade runs its heads layer by layer (to free intermediates), and
    VoxelMorph has its own velocity convolution; in both the last convolution must see and return float32."""
    torch.manual_seed(3)
    model = build_network(tiny_architecture(name))
    layers = [head.last for head in model.heads.values()] if name == "backbone" else [model.flow]
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    hooks = [layer.register_forward_hook(lambda _m, args, out: seen.append((args[0].dtype, out.dtype)))
             for layer in layers]
    try:
        _bf16_forward(model)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == (TINY_LEVELS if name == "backbone" else 1)
    assert all(pair == (torch.float32, torch.float32) for pair in seen), seen
