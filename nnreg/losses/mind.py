"""MIND-SSC: the modality-independent neighbourhood descriptor with self-similarity context, and its loss.

Definition (Heinrich et al., MIND, MedIA 2012; MIND-SSC, MICCAI 2013). Around every voxel ``x`` take the six
neighbours ``x + d e_k`` (``d`` the dilation, in voxels of the image's own grid) and the 12 pairs of them that lie
``d sqrt(2)`` apart (two different axes, four sign combinations each). For a pair ``(a, b)`` the patch distance is

    D(x; a, b) = mean over the patch P of (I(x + a + p) - I(x + b + p))^2,     P = a (2 r + 1)^3 cube (``radius`` r)

the local variance estimate is their mean over the 12 pairs, ``V(x) = mean_ab D(x; a, b)``, and the descriptor is

    MIND(x; a, b) = exp(-D(x; a, b) / V(x)) / max_ab exp(-D(x; a, b) / V(x))      (12 channels in (0, 1])

A contrast change that keeps the local structure (``I -> f(I)`` for a locally monotonic or inverted ``f``) changes
``D`` and ``V`` alike, so the descriptor of a T2-like image matches the T1 descriptor where the anatomy matches.
The pair (not centre-to-neighbour) comparisons are what make SSC less sensitive to noise at the centre voxel.

``V`` is clamped to [1e-3, 1e3] times its image-wide mean: in the flat background ``V`` is ~0, and dividing by it
would turn rounding noise into full-contrast structure. The image is replicated at its border, each patch mean is a
box filter over the same replicated border, everything is computed in float32 with autocast off (the quotient
``D / V`` loses all digits in bf16). Array-axis order throughout, tensors ``(B, 1, H, W, D)``; offsets in voxels.

The loss between two descriptors is the mean squared difference over channels and voxels (0 for identical
structure; at most 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# the 12 pairs of six-neighbourhood offsets that are sqrt(2) apart (unit offsets; scaled by the dilation)
SSC_PAIRS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = tuple(
    (tuple(sa if k == a else 0 for k in range(3)), tuple(sb if k == b else 0 for k in range(3)))  # type: ignore[misc]
    for a in range(3) for b in range(a + 1, 3) for sa in (-1, 1) for sb in (-1, 1)
)
VARIANCE_CLAMP = (1e-3, 1e3)


def _shifted(padded: torch.Tensor, offset: tuple[int, int, int], pad: int,
             shape: tuple[int, int, int]) -> torch.Tensor:
    """``I(x + offset)`` for every ``x`` of the unpadded grid, read from ``padded`` (``pad`` voxels each side)."""
    index = tuple(slice(pad + o, pad + o + n) for o, n in zip(offset, shape))
    return padded[(slice(None), slice(None), *index)]


def _box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2 radius + 1)^3`` cube per voxel, the border replicated (separable, per axis)."""
    if radius == 0:
        return x
    return F.avg_pool3d(F.pad(x, (radius,) * 6, mode="replicate"), 2 * radius + 1, stride=1)


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """The MIND-SSC descriptor ``(B, 12, H, W, D)`` of ``image`` ``(B, 1, H, W, D)`` (module docstring)."""
    if image.dim() != 5 or image.shape[1] != 1:
        raise ValueError(f"expected an image (B, 1, H, W, D), got {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"MIND-SSC needs radius >= 0 and dilation >= 1, got {radius} and {dilation}")
    with torch.autocast(device_type=image.device.type, enabled=False):
        x = image.float()
        shape = tuple(int(s) for s in x.shape[2:])
        padded = F.pad(x, (dilation,) * 6, mode="replicate")
        squared = torch.cat([
            (_shifted(padded, tuple(dilation * o for o in a), dilation, shape)  # type: ignore[arg-type]
             - _shifted(padded, tuple(dilation * o for o in b), dilation, shape)) ** 2  # type: ignore[arg-type]
            for a, b in SSC_PAIRS], dim=1)
        distance = _box_mean(squared, radius)
        variance = distance.mean(dim=1, keepdim=True)
        level = variance.mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-12)
        variance = torch.maximum(torch.minimum(variance, level * VARIANCE_CLAMP[1]), level * VARIANCE_CLAMP[0])
        # exp(-D/V) / max_ab exp(-D/V) = exp(-(D - min_ab D) / V): no underflow for large D / V
        return torch.exp(-(distance - distance.amin(dim=1, keepdim=True)) / variance)


def mind_descriptor_loss(fixed_descriptor: torch.Tensor, warped_descriptor: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of two MIND descriptors (lower is better, 0 for identical structure); with ``weight``
    ``(B, 1, H, W, D)``, each voxel's mean over the channels weighted and summed over the voxel count (a weight of
    ones gives the unweighted value)."""
    if fixed_descriptor.shape != warped_descriptor.shape:
        raise ValueError(f"descriptor shapes differ: {tuple(fixed_descriptor.shape)} and "
                         f"{tuple(warped_descriptor.shape)}")
    with torch.autocast(device_type=fixed_descriptor.device.type, enabled=False):
        squared = (fixed_descriptor.float() - warped_descriptor.float()) ** 2
        if weight is None:
            return squared.mean()
        per_voxel = squared.mean(dim=1, keepdim=True)
        return (per_voxel * weight.float()).sum() / per_voxel.numel()


def mind_loss(fixed: torch.Tensor, warped: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """The MIND-SSC loss of two images ``(B, 1, H, W, D)``: the descriptors' mean squared difference."""
    if fixed.shape != warped.shape:
        raise ValueError(f"expected two images of one shape, got {tuple(fixed.shape)} and {tuple(warped.shape)}")
    return mind_descriptor_loss(mind_ssc(fixed, radius, dilation), mind_ssc(warped, radius, dilation))
