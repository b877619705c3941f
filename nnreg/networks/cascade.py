"""CascadeRegNet: the seed paper's backbone (shared encoder + coarse-to-fine velocity cascade) with CA, LK, BF, LC.

Levels are numbered ``0`` (input resolution) to ``n_levels - 1`` (coarsest, input / 2**(n_levels-1)). At every
estimated level, coarse to fine:

1. upsample the coarser field ×2 (vectors ×2, cell-centred grids) → ``u_prev`` (zero at the coarsest level);
2. warp the moving features by ``u_prev``;
3. predict a velocity ``v`` from ``cat(f + m, f − m)`` (``bilateral_on="velocity"``: bilateral-filtered here,
   guided by the fixed image);
4. ``phi_v = exp(v)`` by scaling and squaring (``integration_steps``; 0 = use ``v`` as a displacement);
5. ``cascade="compose"``: ``u = v' + u_prev(x + v'(x))`` with ``v' = phi_v - id``, i.e. ``phi = phi_prev o phi_v``
   (the moving features were already pulled by ``phi_prev``, ``phi_v`` aligns that result to the fixed image);
   a composition of diffeomorphisms stays diffeomorphic. ``cascade="add"``: ``u = u_prev + v'``, which can fold;
6. ``bilateral_on="field"`` (the paper's placement, "post-deformation field prediction"): the accumulated pull
   field ``u`` of the filtered level(s) is bilateral-filtered, guided by the fixed image on that level's grid.
   Filtering a field is a normalised local average of displacements (voxel units, pull convention kept); unlike
   filtering the velocity it does not guarantee a diffeomorphism, so NDV is worth watching when it is on.

``skip_levels = s > 0`` is the CPU-friendly variant: the encoder and the cascade run on the inputs average-pooled
by ``2**s`` (levels ``0 … s-1`` are not estimated) and the finest field is upsampled to the input grid.

Under bf16 autocast (training on CUDA) the convolutions run in bf16 but every velocity, field and sampling grid is
float32 (:mod:`nnreg.spatial.precision`); warped moving features keep the features' dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnreg.networks.base import RegistrationNetwork
from nnreg.networks.bilateral import JointBilateralFilter
from nnreg.networks.co_attention import CoAttention
from nnreg.networks.encoder import SharedEncoder, feature_pyramid
from nnreg.networks.flow_head import FlowHead, pair_features
from nnreg.networks.output import LevelOutput, RegistrationOutput
from nnreg.spatial import compose, integrate_velocity, resize_field, upsample_field, warp
from nnreg.spatial.precision import to_spatial
from nnreg.utilities.errors import ConfigurationError

CASCADES = ("compose", "add")
BILATERAL_LEVELS = ("last", "all")
BILATERAL_TARGETS = ("field", "velocity")


class CascadeRegNet(RegistrationNetwork):
    """Coarse-to-fine diffeomorphic registration network; every keyword is a plans ``architecture`` kwarg."""

    network_class = "CascadeRegNet"

    def __init__(
        self,
        n_levels: int = 5,
        base_channels: int = 32,
        flow_channels: int | None = None,
        flow_mid_channels: int = 27,
        kernel_size: int = 3,
        cascade: str = "compose",
        integration_steps: int = 7,
        co_attention: bool = False,
        co_attention_levels: Sequence[int] | None = None,
        bilateral_filter: bool = False,
        bilateral_levels: str = "last",
        bilateral_kernel_size: int = 5,
        skip_levels: int = 0,
        bilateral_on: str = "field",
        large_kernel_identity: bool = False,
    ) -> None:
        super().__init__()
        if n_levels < 1:
            raise ConfigurationError(f"n_levels must be >= 1, got {n_levels}")
        if not 0 <= skip_levels < n_levels:
            raise ConfigurationError(f"skip_levels must be in [0, n_levels), got {skip_levels} for {n_levels} levels")
        if cascade not in CASCADES:
            raise ConfigurationError(f"cascade must be one of {CASCADES}, got {cascade!r}")
        if bilateral_levels not in BILATERAL_LEVELS:
            raise ConfigurationError(f"bilateral_levels must be one of {BILATERAL_LEVELS}, got {bilateral_levels!r}")
        if bilateral_on not in BILATERAL_TARGETS:
            raise ConfigurationError(f"bilateral_on must be one of {BILATERAL_TARGETS}, got {bilateral_on!r}")
        if large_kernel_identity and kernel_size == 3:
            raise ConfigurationError("large_kernel_identity needs kernel_size >= 5 (it adds LK blocks with identity)")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ConfigurationError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        if integration_steps < 0:
            raise ConfigurationError(f"integration_steps must be >= 0, got {integration_steps}")
        flow_channels = flow_channels or 2 * base_channels
        estimated = list(range(skip_levels, n_levels))
        if co_attention:
            if co_attention_levels is None:  # default: the two coarsest levels that are estimated
                co_levels = [lv for lv in (n_levels - 2, n_levels - 1) if lv in estimated]
            else:
                co_levels = sorted({int(lv) for lv in co_attention_levels})
                outside = [lv for lv in co_levels if lv not in estimated]
                if outside:
                    raise ConfigurationError(f"co_attention_levels {outside} are not estimated levels "
                                             f"({skip_levels}..{n_levels - 1})")
        else:
            co_levels = []
        self.config = {
            "n_levels": n_levels,
            "base_channels": base_channels,
            "flow_channels": flow_channels,
            "flow_mid_channels": flow_mid_channels,
            "kernel_size": kernel_size,
            "cascade": cascade,
            "integration_steps": integration_steps,
            "co_attention": co_attention,
            "co_attention_levels": co_levels if co_attention else None,
            "bilateral_filter": bilateral_filter,
            "bilateral_levels": bilateral_levels,
            "bilateral_kernel_size": bilateral_kernel_size,
            "skip_levels": skip_levels,
            "bilateral_on": bilateral_on,
            "large_kernel_identity": large_kernel_identity,
        }
        self.n_levels, self.skip_levels, self.cascade = n_levels, skip_levels, cascade
        self.integration_steps = integration_steps
        self.bilateral_on = bilateral_on
        self.encoder = SharedEncoder(base_channels, kernel_size, large_kernel_identity=large_kernel_identity)
        self.heads = nn.ModuleDict(
            {str(lv): FlowHead(2 * base_channels, flow_channels, flow_mid_channels) for lv in estimated}
        )
        self.co_attention = nn.ModuleDict({str(lv): CoAttention(base_channels) for lv in co_levels})
        bf_levels = [] if not bilateral_filter else (estimated if bilateral_levels == "all" else [skip_levels])
        self.bilateral = nn.ModuleDict({str(lv): JointBilateralFilter(bilateral_kernel_size) for lv in bf_levels})

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (the coarsest level is the input / divisor)."""
        return 2 ** (self.n_levels - 1)

    def _encode(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared encoder: one batched call when training, two sequential calls (lower peak memory) otherwise."""
        if not torch.is_grad_enabled():
            return self.encoder(moving), self.encoder(fixed)
        both = self.encoder(torch.cat([moving, fixed], dim=0))
        return both[: moving.shape[0]], both[moving.shape[0] :]

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """Register ``moving`` to ``fixed`` ((B, 1, H, W, D) in [0, 1]); see the module docstring."""
        self.check_pair(moving, fixed)
        size = moving.shape[2:]
        factor = 2**self.skip_levels
        if factor > 1:
            moving, fixed = F.avg_pool3d(moving, factor), F.avg_pool3d(fixed, factor)
        n_estimated = self.n_levels - self.skip_levels
        feat_m, feat_f = self._encode(moving, fixed)
        pyr_m = feature_pyramid(feat_m, n_estimated)  # fine → coarse; popped from the end, coarse first
        pyr_f = feature_pyramid(feat_f, n_estimated)
        del feat_m, feat_f
        guides = feature_pyramid(fixed, n_estimated) if len(self.bilateral) else []

        u: torch.Tensor | None = None
        levels: list[LevelOutput] = []
        for level in range(self.n_levels - 1, self.skip_levels - 1, -1):
            f, m = pyr_f.pop(), pyr_m.pop()
            key = str(level)
            if key in self.co_attention:
                f, m = self.co_attention[key](f, m)
            if u is not None:
                u = upsample_field(u)
                m = warp(m, u, padding="border")
            x = pair_features(f, m)
            del f, m
            head = self.heads[key]
            for layer in list(head)[:-1]:  # rebinding x frees each intermediate early in inference
                x = layer(x)
            v = to_spatial(head.velocity(x))  # float32 under bf16 autocast: integrated and composed in float32
            del x
            if key in self.bilateral and self.bilateral_on == "velocity":
                v = self.bilateral[key](v, guides[level - self.skip_levels])
            phi = integrate_velocity(v, self.integration_steps)
            if u is None:
                u = phi
            elif self.cascade == "compose":
                u = compose(u, phi)
            else:
                u = u + phi
            if key in self.bilateral and self.bilateral_on == "field":
                u = self.bilateral[key](u, guides[level - self.skip_levels])
            levels.append(LevelOutput(velocity=v, displacement=u, scale=2**level))
            del phi
        assert u is not None
        displacement = resize_field(u, size) if factor > 1 else u
        return RegistrationOutput(displacement=displacement, levels=levels)
