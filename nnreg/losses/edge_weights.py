"""Edge-aware weights of the gradient regulariser: smoothness is relaxed where the fixed image has an edge.

Conventions: tensors ``(1, 1, H, W, D)`` in array-axis order; the weights of axis ``a`` live on that axis' forward
differences (``H-1``, ``W-1`` or ``D-1`` entries along it, as in :mod:`nnreg.losses.regularization`):

    w_a(x) = floor + (1 - floor) · exp(-((I(x + e_a) - I(x)) / (κ · s))²)

with ``I`` the fixed image on the field's grid and ``s`` its foreground (non-zero) 99th percentile, so that ``κ``
is a fraction of the image's own intensity range whatever its units. Flat regions keep the full weight 1; across an
edge of about ``κ·s`` or more the weight falls towards ``floor``. Why: the field may then change faster across
tissue boundaries, where label boundaries lie (the bilateral filtering of the field in the seed paper serves the
same purpose), while flat interiors stay as smooth as before; ``floor > 0`` keeps a minimum smoothness everywhere,
which keeps folding away (documentation/prediction.md).

With ``inside`` (a similarity mask's support on the same grid) a difference with a voxel outside keeps the full
weight 1 and ``s`` comes from the voxels inside only, so that what a mask excludes (a lesion, a cut field of view)
shapes neither the similarity nor the regulariser.
"""
from __future__ import annotations

import torch

#: the foreground percentile that sets the image's intensity scale ``s``
SCALE_PERCENTILE = 99.0


def intensity_scale(image: torch.Tensor) -> float:
    """The ``SCALE_PERCENTILE`` percentile of ``image``'s non-zero voxels (1.0 for an image without any)."""
    foreground = image[image != 0].float()
    if foreground.numel() == 0:
        return 1.0
    if foreground.numel() > 1_000_000:      # torch.quantile's input limit is 2**24; a stride keeps it exact enough
        foreground = foreground[:: foreground.numel() // 1_000_000 + 1]
    scale = float(torch.quantile(foreground, SCALE_PERCENTILE / 100.0))
    return scale if scale > 0 else 1.0


def difference_weights(image: torch.Tensor, kappa: float, floor: float,
                       inside: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The three per-axis weights (module docstring) of ``image`` ``(1, 1, H, W, D)``, float32, on its device;
    ``inside`` (bool, the same shape): the voxels whose intensities may shape them (None: all)."""
    if image.dim() != 5 or tuple(image.shape[:2]) != (1, 1):
        raise ValueError(f"expected a (1, 1, H, W, D) image, got {tuple(image.shape)}")
    if inside is not None and tuple(inside.shape) != tuple(image.shape):
        raise ValueError(f"the inside mask {tuple(inside.shape)} is not the image's {tuple(image.shape)}")
    if not kappa > 0 or not 0 < floor <= 1:
        raise ValueError(f"expected kappa > 0 and 0 < floor <= 1, got {kappa} and {floor}")
    image = image.detach().float()
    if inside is not None:
        inside = inside.to(device=image.device, dtype=torch.bool)
        image = torch.where(inside, image, torch.zeros_like(image))
    width = kappa * intensity_scale(image)
    weights = []
    for axis in (2, 3, 4):
        n = image.shape[axis]
        diff = image.narrow(axis, 1, n - 1) - image.narrow(axis, 0, n - 1)
        weight = torch.exp(-(diff / width).square()).mul_(1.0 - floor).add_(floor)
        if inside is not None:      # a difference that reaches outside: the plain regulariser
            both = inside.narrow(axis, 1, n - 1) & inside.narrow(axis, 0, n - 1)
            weight = torch.where(both, weight, torch.ones_like(weight))
        weights.append(weight.contiguous())
    return tuple(weights)
