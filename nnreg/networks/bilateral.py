"""BF: image-guided (joint) bilateral filtering of a predicted field, after Wagner et al. (Sci. Rep. 2022).

Weights ``exp(-d²/2σs² - (I(x) - I(y))²/2σr²)`` with the guide ``I`` = fixed image on the field's grid and trainable
spatial / intensity sigmas (stored as logarithms, so they stay positive). A full K³ neighbourhood at 160×224×192
would need K³ shifted copies (~10 GB for K = 5 by unfolding); instead the filter runs as three separable 1-D
joint-bilateral passes (one per axis), each accumulating ``Σ w·u`` and ``Σ w`` over K shifts in place, so memory
is a few field-sized tensors at any resolution. The separable form is the usual approximation of the full
bilateral filter (Pham & van Vliet 2005). The weights are normalised, so a constant field is preserved exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnreg.spatial.precision import autocast_disabled, to_spatial


class JointBilateralFilter(nn.Module):
    """Filter a (B, C, H, W, D) field guided by a (B, 1, H, W, D) image; window ``kernel_size`` per axis."""

    def __init__(self, kernel_size: int = 5, sigma_spatial: float = 1.0, sigma_intensity: float = 0.1) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.radius = kernel_size // 2
        self.log_sigma_spatial = nn.Parameter(torch.tensor(math.log(sigma_spatial)))
        self.log_sigma_intensity = nn.Parameter(torch.tensor(math.log(sigma_intensity)))

    @property
    def sigmas(self) -> tuple[float, float]:
        """Current (spatial in voxels, intensity in guide units) sigmas."""
        return float(self.log_sigma_spatial.detach().exp()), float(self.log_sigma_intensity.detach().exp())

    def _pass(self, field: torch.Tensor, guide: torch.Tensor, axis: int) -> torch.Tensor:
        """One 1-D joint bilateral pass along tensor dimension ``axis`` (2, 3 or 4), replicate borders."""
        r, n = self.radius, field.shape[axis]
        pad = [0] * 6
        pad[2 * (4 - axis)] = pad[2 * (4 - axis) + 1] = r  # F.pad lists the last dimension first
        field_p = F.pad(field, pad, mode="replicate")
        guide_p = F.pad(guide, pad, mode="replicate")
        inv_2ss = 0.5 * torch.exp(-2.0 * self.log_sigma_spatial)
        inv_2si = 0.5 * torch.exp(-2.0 * self.log_sigma_intensity)
        numerator = torch.zeros_like(field)
        denominator = torch.zeros_like(guide)
        for offset in range(-r, r + 1):
            shifted_guide = guide_p.narrow(axis, r + offset, n)
            weight = torch.exp(-(offset * offset) * inv_2ss - (guide - shifted_guide).square() * inv_2si)
            numerator = numerator.addcmul(weight, field_p.narrow(axis, r + offset, n))
            denominator = denominator + weight
        return numerator / denominator

    def forward(self, field: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if guide.shape[0] != field.shape[0] or guide.shape[2:] != field.shape[2:] or guide.shape[1] != 1:
            raise ValueError(f"guide {tuple(guide.shape)} does not match field {tuple(field.shape)}")
        with autocast_disabled(field.device):   # a field is filtered in float32, also under bf16 autocast
            field = to_spatial(field)
            guide = guide.to(field.dtype)
            for axis in (2, 3, 4):
                field = self._pass(field, guide, axis)
        return field
