"""The field-prediction stage of one cascade level: cat(f + m, f − m) → conv stack → 3-channel velocity.

Widths follow EOIR: Conv3³(2·sc → flow_channels) + ReLU → Conv3³(→ mid_channels) + ReLU → Conv3³(→ 3). The last
layer starts at N(0, 1e-5) weights and zero bias so an untrained network predicts (nearly) the identity. The last
layer runs in float32 even under bf16 autocast: a bf16 velocity keeps ~3 significant digits, too few for the
scaling-and-squaring integration that follows (:mod:`nnreg.spatial.precision`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from nnreg.spatial.precision import autocast_disabled

LAST_LAYER_STD = 1e-5


def pair_features(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """``cat(f + m, f − m)`` along channels, written straight into one buffer (no intermediate sums)."""
    b, c = fixed.shape[:2]
    channels_last = fixed.is_contiguous(memory_format=torch.channels_last_3d) and not fixed.is_contiguous()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    if torch.is_grad_enabled() and (fixed.requires_grad or moving.requires_grad):
        return torch.cat([fixed + moving, fixed - moving], dim=1)
    out = torch.empty((b, 2 * c, *fixed.shape[2:]), dtype=fixed.dtype, device=fixed.device, memory_format=fmt)
    torch.add(fixed, moving, out=out[:, :c])
    torch.sub(fixed, moving, out=out[:, c:])
    return out


def velocity_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` with autocast off and ``x`` in the layer's weight dtype: a velocity is never computed in bf16."""
    with autocast_disabled(x.device):
        return layer(x.to(layer.weight.dtype))


class FlowHead(nn.Sequential):
    """Conv stack mapping paired features (2·sc channels) to a 3-channel velocity in voxel units."""

    def __init__(self, in_channels: int, flow_channels: int, mid_channels: int = 27) -> None:
        last = nn.Conv3d(mid_channels, 3, 3, padding=1)
        nn.init.normal_(last.weight, std=LAST_LAYER_STD)
        nn.init.zeros_(last.bias)
        super().__init__(
            nn.Conv3d(in_channels, flow_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(flow_channels, mid_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            last,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Sequential's, last layer in float32
        for layer in list(self)[:-1]:
            x = layer(x)
        return self.velocity(x)

    def velocity(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer applied to ``x`` (the output of the layers before it) in the weights' dtype, float32 even
        under bf16 autocast; callers that run the other layers themselves (the cascade) end with this."""
        return velocity_layer(self.last, x)

    @property
    def last(self) -> nn.Conv3d:
        """The final 3-channel convolution (tests enlarge it to provoke folding)."""
        return self[-1]
