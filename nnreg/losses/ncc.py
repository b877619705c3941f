"""Local normalised cross-correlation (LNCC) over cubic windows, as in VoxelMorph / TransMorph / the seed paper.

For every voxel the window ``w^3`` around it (zero padding at the border, the window size kept constant, as the
reference implementations do) gives, with ``n = w^3`` and the window sums ``S``,

    cross = S(IJ) - S(I) S(J) / n,   var_I = S(I^2) - S(I)^2 / n (0 below the floor),   var_J likewise
    cc    = min(cross^2, var_I var_J) / (var_I var_J + eps)                     in [0, 1]

and the loss is ``-mean(cc)`` (in (-1, 0]). ``eps = 1e-5`` on the raw sums is VoxelMorph's and TransMorph's
constant, with which the paper's loss weights were tuned.

Why it is bounded. In exact arithmetic ``cross^2 <= var_I var_J`` (Cauchy-Schwarz) and both variances are >= 0,
so ``cc`` lies in [0, 1) (float32 rounding can reach 1.0 exactly, never more). In float32 the variances are
differences of nearly equal sums: in flat regions and the zero background they come out slightly negative,
``var_I var_J + eps`` can cross zero and ``cc`` explode (the old cumulative-sum version gave values from -64 to
521 on a real 2 mm pair). Zeroing the variances below the cancellation floor (below) and clamping ``cross^2`` at
``var_I var_J`` make the bounds hold for any rounding, and bound the gradient: ``|d cc / d cross| <= 1 / sqrt(eps)``,
and ``d var / d J`` vanishes where the window is flat (per window
``|d cc / d J_v| <= R (1 + 0.325 sqrt(n)) / sqrt(eps)``, ``R = max|I|``).
MONAI's ``LocalNormalizedCrossCorrelationLoss`` also works on raw sums and clamps the variances (at 0 in early
releases, at ``smooth_dr = 1e-5`` in current ones) but not ``cross^2``; VoxelMorph and TransMorph clamp nothing
(their ``conv3d`` sums are more accurate than chained cumulative sums, but can still cancel to a negative
variance).

Cancellation floor. A variance is the difference of two window sums of size ``S(X^2)``; float32 resolves it only
to ~``6 w`` ulps of ``S(X^2)`` (three passes of ``w`` additions for each sum). A window whose variance is below
``8 w`` float32 epsilons of its ``S(X^2)`` (8.6e-6 of it for ``w = 9``: a coefficient of variation under 0.3 %) is
flat as far as float32 can tell, and its variance is set to exactly 0: its ``cc`` is 0 and it passes no gradient.
Without the floor an image on a large offset (``1000 + texture``) gives rounding garbage as variances, and
``d cc / d var`` (up to ``1 / eps``) times that garbage spiked the gradient to ~1e4 where the float64 value is ~1e-2.
Texture of 1 % or more of the intensity is untouched; on OpenBrains160 (1 mm, intensities / 255) 0.17 % of the
brain's 9^3 windows fall under the floor: nearly uniform windows at the intensity ceiling, one voxel a grey level
apart, whose float64 variance float32 gives only to ~50 %.

Window sums. Per axis a sliding-window sum (``unfold`` + ``sum``): every window sum adds ``w`` numbers of the
same size, so the rounding error stays ~``w`` ulps of the window's own values and an all-zero window sums to
exactly 0. The previous chained cumulative sums subtracted running totals of up to ``224 * w * w`` — errors of
5e-4 — and a dense ``conv3d`` box filter costs ``w^3`` multiply-adds per voxel (its backward is ~40x slower on
CPU). Always evaluated in float32, also under bf16 autocast: variances lose every digit in bf16.
"""
from __future__ import annotations

import torch

EPS = 1e-5


def _resolved_variance(sum_sq: torch.Tensor, sum_: torch.Tensor, n: float, window: int) -> torch.Tensor:
    """``S(X^2) - S(X)^2 / n`` where float32 resolves it (above ``8 w`` epsilons of ``S(X^2)``), exactly 0 elsewhere
    (also where rounding made it negative); the zeroed windows pass no gradient."""
    variance = sum_sq - sum_ * sum_ / n
    floor = sum_sq * (8 * window * torch.finfo(torch.float32).eps)
    return torch.where(variance > floor, variance, variance.new_zeros(()))


def _zero_padded(x: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """``x`` with ``pad`` zeros before and after along ``dim`` (``F.pad`` fills the whole new tensor with zeros before
    copying ``x`` in; only the two border slabs need it: a tenth of a 1 mm refinement step)."""
    shape = list(x.shape)
    size = shape[dim]
    shape[dim] = size + 2 * pad
    out = x.new_empty(shape)
    out.narrow(dim, 0, pad).zero_()
    out.narrow(dim, pad + size, pad).zero_()
    out.narrow(dim, pad, size).copy_(x)
    return out


def _window_sums(x: torch.Tensor, window: int) -> torch.Tensor:
    """The separable zero-padded window sum itself (no autograd bookkeeping of its own)."""
    pad = window // 2
    out = x
    for axis in range(3):
        out = _zero_padded(out, 2 + axis, pad).unfold(2 + axis, window, 1).sum(-1)
    return out


class _BoxSum(torch.autograd.Function):
    """Box sum whose backward is the box sum of the incoming gradient: a centred odd window with zero padding is its
    own adjoint (``sum_i g_i [|i - j| <= p] = sum_{|k| <= p} g_{j+k}``). Autograd through ``unfold`` would instead
    zero-fill and scatter-add a ``window``-times larger buffer per axis (measured: 0.7 of the 2.2 s of a 1 mm
    refinement step on 2 CPU cores)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, window: int) -> torch.Tensor:
        ctx.window = window  # type: ignore[attr-defined]
        return _window_sums(x, window)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _window_sums(grad.contiguous(), ctx.window), None  # type: ignore[attr-defined]


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of ``x`` (N, C, H, W, D) over a ``window^3`` cube centred on each voxel, zeros outside.

    Separable: per axis, zero-pad by ``window // 2`` and sum each length-``window`` run (a strided ``unfold``
    view, no copy). Exact zeros stay exact zeros; the error is a few ulps of the window's values. The gradient is
    the box sum of the incoming gradient (:class:`_BoxSum`).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the NCC window must be odd and >= 1, got {window}")
    if window == 1:
        return x
    if torch.is_grad_enabled() and x.requires_grad:
        return _BoxSum.apply(x, window)
    return _window_sums(x, window)


class TargetWindows:
    """The window sums of one fixed image, computed once for every :meth:`cc` against it (a refinement evaluates
    hundreds of warped images against the same fixed one: three window sums a step instead of five). The values are
    bitwise those of :func:`local_ncc`, which is built on it."""

    def __init__(self, fixed: torch.Tensor, window: int = 9, eps: float = EPS) -> None:
        if fixed.dim() != 5 or fixed.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W, D) image, got {tuple(fixed.shape)}")
        if eps <= 0:
            raise ValueError(f"the NCC eps must be > 0 (it bounds the gradient), got {eps}")
        self.window, self.eps, self.n = window, eps, float(window ** 3)
        with torch.autocast(device_type=fixed.device.type, enabled=False):
            self.fixed = fixed.float()
            sums = box_sum(torch.cat([self.fixed, self.fixed * self.fixed], dim=0), window)
            self.s_i, s_ii = sums.split(self.fixed.shape[0], dim=0)
            self.var_i = _resolved_variance(s_ii, self.s_i, self.n, window)

    def cc(self, warped: torch.Tensor) -> torch.Tensor:
        """Per-voxel squared local correlation in [0, 1] of the fixed image and ``warped`` (same shape)."""
        if warped.shape != self.fixed.shape:
            raise ValueError(f"expected two (B, 1, H, W, D) images of one shape, got {tuple(self.fixed.shape)} and "
                             f"{tuple(warped.shape)}")
        with torch.autocast(device_type=warped.device.type, enabled=False):
            i, j = self.fixed, warped.float()
            sums = box_sum(torch.cat([j, j * j, i * j], dim=0), self.window)
            s_j, s_jj, s_ij = sums.split(i.shape[0], dim=0)
            cross = s_ij - self.s_i * s_j / self.n
            var_j = _resolved_variance(s_jj, s_j, self.n, self.window)
            product = self.var_i * var_j
            return torch.minimum(cross * cross, product) / (product + self.eps)


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = EPS) -> torch.Tensor:
    """Per-voxel squared local correlation ``cc`` in [0, 1], shape (B, 1, H, W, D), of two (B, 1, H, W, D) images."""
    if fixed.shape != warped.shape or fixed.dim() != 5 or fixed.shape[1] != 1:
        raise ValueError(f"expected two (B, 1, H, W, D) images of one shape, got {tuple(fixed.shape)} and "
                         f"{tuple(warped.shape)}")
    return TargetWindows(fixed, window, eps).cc(warped)


def local_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = EPS) -> torch.Tensor:
    """``-mean(local_ncc)``: the similarity loss (lower is better; about -1 for identical images with texture)."""
    return -local_ncc(fixed, warped, window, eps).mean()
