"""The paper's components as plans options: BF on the predicted field (or the velocity), LK with its identity
branch (LKU-Net layout), co-attention at listed levels; old plans without the new keys build the old network."""
from __future__ import annotations

import pytest
import torch

from nnreg.networks import affordable_co_attention_levels, build_network, default_architecture
from nnreg.networks.large_kernel import LargeKernelConv
from tests.networks.conftest import TINY_LEVELS, TINY_SHAPE, image_pair
from nnreg.utilities.errors import ConfigurationError


def narrow(**overrides) -> dict:
    """A 4-level backbone narrow enough for fast tests, with ``overrides``."""
    return default_architecture(TINY_LEVELS, base_channels=4, flow_mid_channels=8, **overrides)


OPTIONS = [
    {"bilateral_filter": True},
    {"bilateral_filter": True, "bilateral_levels": "all"},
    {"bilateral_filter": True, "bilateral_on": "velocity"},
    {"kernel_size": 5, "large_kernel_identity": True},
    {"co_attention": True, "co_attention_levels": [1, 2, 3]},
    {"co_attention": True, "bilateral_filter": True, "kernel_size": 5, "large_kernel_identity": True},
]


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items()))
def test_each_option_builds_runs_forward_and_backward(overrides):
    torch.manual_seed(0)
    model = build_network(narrow(**overrides))
    rebuilt = build_network(model.architecture)
    assert rebuilt.architecture == model.architecture
    moving, fixed = image_pair()
    out = model(moving, fixed)
    assert out.displacement.shape == (1, 3, *TINY_SHAPE)
    assert out.levels[-1].displacement is out.displacement
    loss = out.displacement.square().sum() + sum(lv.velocity.square().sum() for lv in out.levels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    with torch.no_grad():  # the in-place inference path (LK merged into one kernel) computes the same field
        again = model(moving, fixed)
    torch.testing.assert_close(again.displacement, out.displacement, atol=1e-6, rtol=1e-4)


def _constant_heads(model: torch.nn.Module, value: float) -> None:
    """Every head predicts the same constant velocity (weights of the last layer 0, bias ``value``)."""
    with torch.no_grad():
        for head in model.heads.values():
            head.last.weight.zero_()
            head.last.bias.fill_(value)


@pytest.mark.parametrize("levels", ["last", "all"])
def test_bf_on_the_field_preserves_a_constant_field(levels):
    torch.manual_seed(0)
    plain = build_network(narrow())
    filtered = build_network(narrow(bilateral_filter=True, bilateral_levels=levels))
    filtered.load_state_dict(plain.state_dict(), strict=False)
    _constant_heads(plain, 0.3)
    _constant_heads(filtered, 0.3)
    moving, fixed = image_pair()
    with torch.no_grad():
        reference, got = plain(moving, fixed).displacement, filtered(moving, fixed).displacement
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    assert (got - got.mean(dim=(2, 3, 4), keepdim=True)).abs().max() < 1e-4  # constant stays constant


def test_bf_filters_the_predicted_field_not_the_velocity():
    """``bilateral_on="field"``: the output is the filter applied to the unfiltered network's output field."""
    torch.manual_seed(0)
    plain = build_network(narrow())
    with torch.no_grad():
        for head in plain.heads.values():
            head.last.weight.normal_(0, 0.05)  # a non-trivial field
    on_field = build_network(narrow(bilateral_filter=True))
    on_velocity = build_network(narrow(bilateral_filter=True, bilateral_on="velocity"))
    for model in (on_field, on_velocity):
        model.load_state_dict(plain.state_dict(), strict=False)
        with torch.no_grad():
            model.bilateral["0"].log_sigma_spatial.fill_(0.5)
    moving, fixed = image_pair()
    with torch.no_grad():
        raw = plain(moving, fixed)
        field_out = on_field(moving, fixed)
        velocity_out = on_velocity(moving, fixed)
        expected = on_field.bilateral["0"](raw.displacement, fixed)
    assert raw.displacement.abs().max() > 0.05
    torch.testing.assert_close(field_out.displacement, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(field_out.levels[-1].velocity, raw.levels[-1].velocity)  # velocity untouched
    assert (velocity_out.displacement - field_out.displacement).abs().max() > 1e-4  # the placements differ
    assert (velocity_out.levels[-1].velocity - raw.levels[-1].velocity).abs().max() > 1e-4


def test_large_kernel_identity_layout_has_identity_branches_that_merge():
    torch.manual_seed(0)
    model = build_network(narrow(kernel_size=5, large_kernel_identity=True))
    lk = [m for m in model.encoder.modules() if isinstance(m, LargeKernelConv)]
    assert len(lk) == 3 and all(m.identity for m in lk)
    assert len(model.encoder.blocks) == 6
    replaced = build_network(narrow(kernel_size=5))  # the paper's replacement: widths never match
    lk_replaced = [m for m in replaced.encoder.modules() if isinstance(m, LargeKernelConv)]
    assert len(lk_replaced) == 3 and not any(m.identity for m in lk_replaced)
    conv = lk[1].double()
    x = torch.randn(1, conv.large.in_channels, 6, 7, 8, dtype=torch.float64, requires_grad=True)
    branches = conv(x)
    with torch.no_grad():
        merged = conv(x)
    torch.testing.assert_close(merged, branches.detach())
    torch.testing.assert_close(branches, conv.large(x) + conv.small(x) + conv.point(x) + x)
    with pytest.raises(ConfigurationError):
        build_network(narrow(large_kernel_identity=True))  # needs K >= 5


def test_co_attention_levels_key_and_affordability():
    model = build_network(narrow(co_attention=True, co_attention_levels=[1, 3]))
    assert sorted(model.co_attention) == ["1", "3"]
    assert model.architecture["kwargs"]["co_attention_levels"] == [1, 3]
    default = build_network(narrow(co_attention=True))
    assert sorted(default.co_attention) == ["2", "3"]  # the two coarsest, as before
    with pytest.raises(ConfigurationError):
        build_network(narrow(co_attention=True, co_attention_levels=[4]))
    with pytest.raises(ConfigurationError):
        build_network(narrow(co_attention=True, co_attention_levels=[0], skip_levels=1))
    assert affordable_co_attention_levels([160, 224, 192], 5) == [3, 4]  # 13 440 and 1 680 positions
    assert affordable_co_attention_levels([160, 224, 192], 5, max_positions=2000) == [4]
    assert affordable_co_attention_levels([80, 112, 96], 5, skip_levels=3) == [3, 4]


def test_old_plans_without_the_new_keys_build_the_old_network():
    new = default_architecture(TINY_LEVELS, base_channels=4, kernel_size=5, bilateral_filter=True)
    old = {"network_class": "CascadeRegNet",
           "kwargs": {k: v for k, v in new["kwargs"].items() if k not in ("bilateral_on", "large_kernel_identity")}}
    a, b = build_network(old), build_network(new)
    assert list(a.state_dict()) == list(b.state_dict())
    assert a.config["large_kernel_identity"] is False
    assert len(a.encoder.blocks) == 3
