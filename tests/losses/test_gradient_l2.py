"""``gradient_l2`` with its gradient written out: value and gradient equal autograd's through the textbook formula
(forward differences, squared, averaged per axis, then over the axes), on odd shapes, a batch, an axis of length 1,
a leaf that is not float32, and inside a larger graph."""
from __future__ import annotations

import pytest
import torch

from nnreg.losses import gradient_l2


def _textbook(field: torch.Tensor) -> torch.Tensor:
    f = field.float()
    terms = []
    for axis in (2, 3, 4):
        n = f.shape[axis]
        if n < 2:
            terms.append(f.new_zeros(()))
            continue
        diff = f.narrow(axis, 1, n - 1) - f.narrow(axis, 0, n - 1)
        terms.append((diff * diff).mean())
    return (terms[0] + terms[1] + terms[2]) / 3.0


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (2, 3, 4, 1, 5), (1, 3, 9, 8, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_equal_autograds(shape, dtype) -> None:
    torch.manual_seed(0)
    field = torch.randn(*shape, dtype=dtype, requires_grad=True)
    weight = torch.randn(shape[1:], dtype=dtype)           # the loss inside a larger graph: weighted, scaled
    ours = gradient_l2(field * weight) * 1.7
    (grad_ours,) = torch.autograd.grad(ours, field)
    reference = _textbook(field * weight) * 1.7
    (grad_reference,) = torch.autograd.grad(reference, field)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-5, atol=1e-7)
    assert grad_ours.dtype == dtype and float(grad_ours.abs().max()) > 0


def test_constant_field_has_zero_loss_and_gradient() -> None:
    field = torch.full((1, 3, 4, 5, 6), 2.5, requires_grad=True)
    loss = gradient_l2(field)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(field.grad.abs().max()) == 0.0


def test_a_retained_graph_gives_the_same_gradient_twice() -> None:
    """The saved differences are read, not modified, by the backward."""
    torch.manual_seed(1)
    field = torch.randn(1, 3, 6, 5, 4, requires_grad=True)
    loss = gradient_l2(field)
    (first,) = torch.autograd.grad(loss, field, retain_graph=True)
    (second,) = torch.autograd.grad(loss, field)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
