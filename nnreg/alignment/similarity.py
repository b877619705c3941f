"""Similarity losses for the affine stage (lower is better), restricted to a weight map (masks, overlap).

Conventions: images ``(1, 1, H, W, D)`` on one grid, intensities normalised to about [0, 1]
(:mod:`nnreg.registration.normalization`). ``"ncc"`` is local normalised cross-correlation (squared, in [0, 1], the
windows and variance floor of :mod:`nnreg.losses.ncc`, see :func:`local_cc`): the choice for two images of one
contrast; it ignores a smooth bias and any local linear intensity change. ``"mi"`` is mutual information from a
Parzen-window joint histogram (Gaussian kernels), normalised: the robust choice for different contrasts or strongly
non-linear intensity changes.
"""
from __future__ import annotations

import torch

from nnreg.losses.ncc import EPS, TargetWindows, _resolved_variance, box_sum
from nnreg.utilities.errors import ConfigurationError

SIMILARITIES = ("ncc", "mi")
MI_BINS = 32
FLAT = 0.1         # a warped window counts with at least this fraction of the fixed window's variance (local_cc)


def local_cc(fixed: torch.Tensor, warped: torch.Tensor, window: int, eps: float = EPS) -> torch.Tensor:
    """Per-voxel ``rho^2 * var_i^2 / (var_i^2 + eps)`` in [0, 1): the squared local correlation ``rho^2 = cross^2 /
    (var_i var_j)`` weighted by the fixed window alone, i.e. ``min(cross^2, var_i var_j) var_i / ((var_i^2 + eps)
    max(var_j, FLAT var_i))`` (window sums and variances as :func:`nnreg.losses.ncc.local_ncc`, which gives the
    same value for two identical windows).

    Why not ``local_ncc``'s ``cross^2 / (var_i var_j + eps)``: at a given correlation it grows with ``var_j``, so a
    transform that brings more of the moving image's contrast into the fixed image's low-variance windows (the edge
    of the head, a smooth blob's tails) gains; self-registration then shrinks (measured: loss -0.4810 at the identity
    but -0.4817 at a 0.4 % shrink on a 4 mm brain pair, -0.662 vs -0.750 at a 20 % shrink on a smooth 2 mm blob).
    Here the warped image enters only through ``rho^2 <= 1`` (invariant to its local contrast), so two identical
    images are best aligned at the identity. ``var_j`` is floored at ``FLAT var_i`` in the denominator (the windows
    where the warped image is far flatter than the fixed one count less): the gradient stays bounded, ``|d cc / d
    J_v| <~ 1 / sqrt(FLAT var_i)`` times the weight."""
    target = TargetWindows(fixed, window, eps)
    with torch.autocast(device_type=warped.device.type, enabled=False):
        i, j, var_i = target.fixed, warped.float(), target.var_i
        sums = box_sum(torch.cat([j, j * j, i * j], dim=0), window)
        s_j, s_jj, s_ij = sums.split(i.shape[0], dim=0)
        cross = s_ij - target.s_i * s_j / target.n
        var_j = _resolved_variance(s_jj, s_j, target.n, window)
        denominator = (var_i * var_i + eps) * torch.maximum(var_j, FLAT * var_i)
        return torch.minimum(cross * cross, var_i * var_j) * var_i / denominator.clamp_min(1e-30)


def weighted_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None,
                      window: int, normaliser: torch.Tensor | float | None = None) -> torch.Tensor:
    """``-mean(local_cc)`` over the voxels, weighted by ``weight`` (None = every voxel): the weighted sum divided by
    ``normaliser`` (None: the weights' sum)."""
    cc = local_cc(fixed, warped, window)
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
