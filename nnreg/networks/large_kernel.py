"""LK: large-kernel convolution after Jia et al. (LKU-Net): parallel K³, 3³ and 1³ convolutions plus identity, summed.

The identity branch exists only when input and output widths match. Because all branches are linear and share
the centre, they are re-parameterised into ONE K³ convolution for inference (exactly the same result, cost of
a single K³ convolution instead of K³ + 3³ + 1³ + a sum).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LargeKernelConv(nn.Module):
    """Sum of K³, 3³, 1³ convolutions (and identity if widths match); 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size < 5 or kernel_size % 2 == 0:
            raise ValueError(f"large kernels must be odd and >= 5, got {kernel_size}")
        self.kernel_size = kernel_size
        self.large = nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.small = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.point = nn.Conv3d(in_channels, out_channels, 1)
        self.identity = in_channels == out_channels

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single K³ kernel and bias equal to the sum of all branches."""
        k, c = self.kernel_size, self.kernel_size // 2
        weight = self.large.weight.clone()
        weight[:, :, c - 1 : c + 2, c - 1 : c + 2, c - 1 : c + 2] += self.small.weight
        weight[:, :, c, c, c] += self.point.weight[:, :, 0, 0, 0]
        if self.identity:
            idx = torch.arange(weight.shape[0], device=weight.device)
            weight[idx, idx, c, c, c] += 1.0
        bias = self.large.bias + self.small.bias + self.point.bias
        assert weight.shape[-1] == k
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and (x.requires_grad or self.large.weight.requires_grad)):
            weight, bias = self.merged_weight_and_bias()
            return F.conv3d(x, weight, bias, padding=self.kernel_size // 2)
        y = self.large(x) + self.small(x) + self.point(x)
        return y + x if self.identity else y
