"""The LUMIR VoxelMorph baseline: a U-Net on cat(moving, fixed) predicting a full-resolution field.

Encoder widths (16, 32, 32, 32), each a Conv3³ + LeakyReLU(0.2) followed by 2× max pooling; decoder widths
(32, 32, 32, 32, 32, 16, 16): the first four upsample ×2 (nearest) and concatenate the matching encoder output, the
remaining ones refine at full resolution; a Conv3³ flow layer (N(0, 1e-5) init) gives the field in voxel units.
No integration by default (``integration_steps=7`` gives VoxelMorph-diff). Same output structure as the cascade.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnreg.networks.base import RegistrationNetwork
from nnreg.networks.flow_head import LAST_LAYER_STD, velocity_layer
from nnreg.networks.output import LevelOutput, RegistrationOutput
from nnreg.spatial import integrate_velocity
from nnreg.spatial.precision import to_spatial
from nnreg.utilities.errors import ConfigurationError


def _conv(in_channels: int, out_channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(slope, inplace=True))


class VoxelMorph(RegistrationNetwork):
    """VoxelMorph U-Net (Balakrishnan et al. 2019) with the LUMIR baseline widths."""

    network_class = "VoxelMorph"

    def __init__(
        self,
        encoder_channels: Sequence[int] = (16, 32, 32, 32),
        decoder_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        negative_slope: float = 0.2,
        integration_steps: int = 0,
    ) -> None:
        super().__init__()
        encoder_channels, decoder_channels = list(encoder_channels), list(decoder_channels)
        if len(decoder_channels) < len(encoder_channels):
            raise ConfigurationError("VoxelMorph needs at least as many decoder as encoder widths")
        self.config = {
            "encoder_channels": encoder_channels,
            "decoder_channels": decoder_channels,
            "negative_slope": negative_slope,
            "integration_steps": integration_steps,
        }
        self.integration_steps = integration_steps
        depth = len(encoder_channels)
        self.encoder = nn.ModuleList()
        previous = 2
        for width in encoder_channels:
            self.encoder.append(_conv(previous, width, negative_slope))
            previous = width
        self.decoder = nn.ModuleList()
        for i, width in enumerate(decoder_channels[:depth]):
            self.decoder.append(_conv(previous, width, negative_slope))
            previous = width + encoder_channels[depth - 1 - i]  # after upsampling, cat the skip
        self.refine = nn.ModuleList()
        for width in decoder_channels[depth:]:
            self.refine.append(_conv(previous, width, negative_slope))
            previous = width
        self.flow = nn.Conv3d(previous, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=LAST_LAYER_STD)
        nn.init.zeros_(self.flow.bias)
        self._divisor = 2**depth

    @property
    def divisor(self) -> int:
        """2**len(encoder_channels): the multiple preprocessing pads to (other shapes work, pooling floors them)."""
        return self._divisor

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """Register ``moving`` to ``fixed`` ((B, 1, H, W, D)); returns one level at full resolution."""
        self.check_pair(moving, fixed, divisible=False)
        x = torch.cat([moving, fixed], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        for block in self.decoder:
            x = block(x)
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")  # any input shape works
            x = torch.cat([x, skip], dim=1)
        for block in self.refine:
            x = block(x)
        velocity = to_spatial(velocity_layer(self.flow, x))  # computed in float32 under bf16 autocast
        del x
        displacement = integrate_velocity(velocity, self.integration_steps)
        return RegistrationOutput(displacement=displacement, levels=[LevelOutput(velocity, displacement, 1)])
