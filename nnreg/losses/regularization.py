"""Smoothness regulariser ``||grad u||^2`` of a displacement or velocity field.

Forward differences along each array axis, squared and averaged over voxels and components, then averaged
over the three axes — the ``Grad3d('l2')`` of VoxelMorph/TransMorph with which the paper's λ = 5-6 were tuned.
Units are the field's own voxel units on its own grid.

The gradient is written out (:class:`_GradientL2`): the loss is quadratic, so its gradient is the linear map
``2/(3·N_a) · Dᵀ D f`` summed over the axes ``a`` (``D`` the forward difference, ``N_a`` the number of differences),
computed in place on one buffer. Autograd's version zero-filled a full-size tensor for each of the six slices' backward;
on a 1 mm field (3 × 160 × 208 × 192) that was about a fifth of a test-time refinement step.

``weights`` (one tensor per axis, the shape of that axis' differences with one channel, e.g.
:func:`nnreg.losses.edge_weights.difference_weights`; taken as float32, no gradient) weight each squared
difference: ``Σ_a mean(w_a · (D_a f)²) / 3``, gradient ``2/(3·N_a) · Dᵀ (w_a · D_a f)``; without them the two are
the unweighted ones, bit for bit.
"""
from __future__ import annotations

import torch


def _differences(f: torch.Tensor, axis: int) -> torch.Tensor | None:
    n = f.shape[axis]
    return f.narrow(axis, 1, n - 1) - f.narrow(axis, 0, n - 1) if n >= 2 else None


class _GradientL2(torch.autograd.Function):
    """``gradient_l2`` with its gradient written out (module docstring). The forward differences are kept for the
    backward (three field-size tensors) and read, never modified, so a retained graph can run backward again."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, f: torch.Tensor,  # type: ignore[override]
                weights: tuple[torch.Tensor | None, ...] | None = None) -> torch.Tensor:
        total = f.new_zeros(())
        diffs = []
        for i, axis in enumerate((2, 3, 4)):
            diff = _differences(f, axis)
            weight = None if weights is None or diff is None else weights[i]
            if weight is not None:    # w·D f, kept for the backward: the sum is (D f)·(w·D f)
                weighted = diff * weight
                total = total + (weighted * diff).sum() / diff.numel()
                diff = weighted
            elif diff is not None:    # the sum of squares without a squared copy
                total = total + torch.linalg.vector_norm(diff).square() / diff.numel()
            diffs.append(diff)
        ctx.shape = f.shape                                                  # type: ignore[attr-defined]
        ctx.save_for_backward(*diffs)                                        # None for an axis of length 1
        return total / 3.0

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.new_zeros(ctx.shape)                                      # type: ignore[attr-defined]
        for axis, diff in zip((2, 3, 4), ctx.saved_tensors):                 # type: ignore[attr-defined]
            if diff is None:
                continue
            n, scale = out.shape[axis], 2.0 / (3.0 * diff.numel())
            out.narrow(axis, 1, n - 1).add_(diff, alpha=scale)
            out.narrow(axis, 0, n - 1).sub_(diff, alpha=scale)
        return out.mul_(grad), None


def gradient_l2(field: torch.Tensor, weights: tuple[torch.Tensor | None, ...] | None = None) -> torch.Tensor:
    """Mean squared forward-difference gradient of a (B, C, H, W, D) field (a scalar); ``weights`` (module
    docstring): per-axis weights of the squared differences."""
    if field.dim() != 5:
        raise ValueError(f"expected a field (B, C, H, W, D), got {tuple(field.shape)}")
    if weights is not None:
        if len(weights) != 3:
            raise ValueError(f"expected one weight tensor per axis, got {len(weights)}")
        for axis, weight in zip((2, 3, 4), weights):
            expected = (*field.shape[:axis], field.shape[axis] - 1, *field.shape[axis + 1:])
            if weight is not None and (weight.dim() != 5 or weight.shape[1] != 1 or weight.shape[0] != field.shape[0]
                                       or tuple(weight.shape[2:]) != expected[2:]):
                raise ValueError(f"the weights of axis {axis - 2} {tuple(weight.shape)} do not match the field's "
                                 f"differences {expected}")
    with torch.autocast(device_type=field.device.type, enabled=False):
        weights = None if weights is None else tuple(None if w is None else w.detach().float() for w in weights)
        return _GradientL2.apply(field.float(), weights)
