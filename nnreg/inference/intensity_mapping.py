"""The moving image's intensities mapped onto the fixed image's contrast by their joint distribution, so that a pair of
two contrasts can finish its refinement with local NCC (multi-modal pairs, MIND-SSC first).

Definition (the functional dependence behind the correlation ratio, Roche et al., MICCAI 1998). With the moving image
``J`` warped by the current transform onto the fixed image ``I``'s grid, and ``B_1 .. B_n`` the ``n`` intervals of
about equal count of ``J``'s foreground intensities (between its quantiles), the mapping is

    f(t_k) = mean of I(x) over the voxels x with J(x) in B_k,        t_k = mean of J over the same voxels,

linear between the ``t_k`` and constant beyond the first and last; ``f(0) = 0`` where ``J`` is background (zero).
Among all functions of ``J`` it is the one closest to ``I`` in the mean squared sense (the conditional mean), so
``f(J)`` has the fixed image's contrast wherever the pair's tissues map one to one — a T2-like image's bright CSF
becomes the T1 image's dark CSF, a FLAIR-like image's non-monotonic grey/white order becomes T1's — and local NCC, much
sharper than a modality-independent descriptor, can go on from there.

Why after a first registration: the conditional mean is only as good as the overlap of the tissues it is estimated
on; MIND-SSC brings the pair close enough first (documentation/prediction.md, the multi-modal table). Voxels are
those where both images are non-zero (skull-stripped brains: the brain): zero means background, so an image whose
background is not zero (z-scored, CT) is mapped over its whole grid, and a tissue voxel that is exactly 0 stays 0.
Tensors ``(1, 1, H, W, D)``, one grid, float32.
"""
from __future__ import annotations

import torch

MIN_VOXELS_PER_BIN = 50


def conditional_mean_mapping(fixed: torch.Tensor, warped: torch.Tensor,
                             bins: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, f(t))``: for each of ``warped``'s foreground intervals between its ``bins + 1`` quantiles, the mean of
    ``warped`` and of the fixed image over its voxels (module docstring). A value that many voxels share is one edge,
    so one intensity never straddles two intervals. ``n = min(bins, overlap voxels // MIN_VOXELS_PER_BIN)``
    intervals: with at most ``n`` distinct intensities each is its own interval. Non-finite voxels are left out.
    Raises ValueError when the images share (almost) no foreground."""
    if fixed.shape != warped.shape:
        raise ValueError(f"expected two images of one shape, got {tuple(fixed.shape)} and {tuple(warped.shape)}")
    mask = (fixed != 0) & (warped != 0) & torch.isfinite(fixed) & torch.isfinite(warped)
    j, i = warped[mask].double(), fixed[mask].double()
    if j.numel() < MIN_VOXELS_PER_BIN:
        raise ValueError(f"the two images overlap on {j.numel()} non-zero voxels: too few to map intensities")
    n = max(1, min(bins, j.numel() // MIN_VOXELS_PER_BIN))
    values, counts = torch.unique(j, return_counts=True)    # sorted
    if values.numel() <= n:                           # few distinct intensities (a label-like image): one bin each
        edges = values
        k = torch.searchsorted(edges, j, right=True) - 1
    else:                                             # a value shared by many voxels is one edge
        positions = torch.linspace(0, j.numel() - 1, n + 1, dtype=torch.float64).round().long()
        # the sorted j at those positions, read from the counts (no second sort)
        edges = torch.unique(values[torch.searchsorted(counts.cumsum(0), positions, right=True)])
        # interval [e_k, e_k+1); the maximum joins the last one (alone it would be one voxel's fixed intensity)
        k = (torch.searchsorted(edges, j, right=True) - 1).clamp(max=max(edges.numel() - 2, 0))
    count = torch.bincount(k, minlength=edges.numel()).double()
    used = count > 0
    t = torch.bincount(k, weights=j, minlength=edges.numel())[used] / count[used]
    f = torch.bincount(k, weights=i, minlength=edges.numel())[used] / count[used]
    return t.float(), f.float()


def apply_mapping(image: torch.Tensor, t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``f(image)``: linear between the points ``(t, f)`` (increasing ``t``), constant beyond them, zeros kept."""
    if t.dim() != 1 or t.shape != f.shape or t.numel() == 0:
        raise ValueError("expected two 1-D tensors of one length >= 1 for the mapping")
    if t.numel() == 1:
        out = torch.full_like(image, float(f[0]))
    else:
        x = image.clamp(float(t[0]), float(t[-1]))
        k = torch.searchsorted(t.contiguous(), x.reshape(-1).contiguous(), right=True).clamp(1, t.numel() - 1)
        t0, t1, f0, f1 = t[k - 1], t[k], f[k - 1], f[k]
        weight = (x.reshape(-1) - t0) / (t1 - t0)
        out = (f0 + weight * (f1 - f0)).reshape(image.shape).to(image.dtype)
    return torch.where(image != 0, out, torch.zeros_like(out))
