"""Similarity losses for the affine stage (lower is better), restricted to a weight map (masks, overlap).

Conventions: images ``(1, 1, H, W, D)`` on one grid, intensities normalised to about [0, 1]
(:mod:`nnreg.registration.normalization`). ``"ncc"`` is local normalised cross-correlation (squared, in [0, 1], the
training loss's :func:`nnreg.losses.ncc.local_ncc`): the choice for two images of one contrast; it ignores a smooth
bias and any local linear intensity change. ``"mi"`` is mutual information from a Parzen-window joint histogram
(Gaussian kernels), normalised: the robust choice for different contrasts or strongly non-linear intensity changes.
"""
from __future__ import annotations

import torch

from nnreg.losses.ncc import local_ncc
from nnreg.utilities.errors import ConfigurationError

SIMILARITIES = ("ncc", "mi")
MI_BINS = 32


def weighted_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None,
                      window: int, normaliser: torch.Tensor | float | None = None) -> torch.Tensor:
    """``-mean(local NCC)`` over the voxels, weighted by ``weight`` (None = every voxel): the weighted sum divided by
    ``normaliser`` (None: the weights' sum)."""
    cc = local_ncc(fixed, warped, window)
    if weight is None:
        return -cc.mean()
    total = weight.sum() if normaliser is None else torch.as_tensor(normaliser, dtype=cc.dtype)
    return -(cc * weight).sum() / total.clamp_min(1e-6)


def _soft_bins(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Parzen weights ``(N, bins)`` of values in [0, 1] (Gaussian kernel one bin wide), rows summing to 1."""
    centres = torch.linspace(0.0, 1.0, bins, dtype=values.dtype, device=values.device)
    sigma = 1.0 / (bins - 1)
    weights = torch.exp(-0.5 * ((values.clamp(0, 1)[:, None] - centres[None, :]) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


def mutual_information_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None,
                            bins: int = MI_BINS) -> torch.Tensor:
    """``-NMI = -(H(F) + H(M)) / H(F, M)`` over the weighted voxels (normalised mutual information: unlike MI it
    does not reward changing the overlap of the two images' backgrounds, e.g. by shrinking one)."""
    f, m = fixed.reshape(-1), warped.reshape(-1)
    w = torch.ones_like(f) if weight is None else weight.reshape(-1)
    keep = w > 0
    f, m, w = f[keep], m[keep], w[keep]
    joint = (_soft_bins(f, bins) * w[:, None]).T @ _soft_bins(m, bins)
    joint = joint / joint.sum().clamp_min(1e-12)
    entropy = lambda p: -(p * torch.log(p.clamp_min(1e-12))).sum()  # noqa: E731
    return -(entropy(joint.sum(dim=1)) + entropy(joint.sum(dim=0))) / entropy(joint)


def similarity_loss(name: str, fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None,
                    window: int, normaliser: torch.Tensor | float | None = None) -> torch.Tensor:
    """The loss ``name`` (one of :data:`SIMILARITIES`); ``normaliser``: see :func:`weighted_ncc_loss` (mutual
    information normalises its joint histogram itself)."""
    if name == "ncc":
        return weighted_ncc_loss(fixed, warped, weight, window, normaliser)
    if name == "mi":
        return mutual_information_loss(fixed, warped, weight)
    raise ConfigurationError(f"unknown similarity {name!r} (choose one of {', '.join(SIMILARITIES)})")
