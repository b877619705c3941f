"""The live-bytes tracker: frees are seen when PyTorch really frees (autograd included); oneDNN workspace model."""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from nnreg.planning.memory_trace import LiveBytesTracker, hidden_workspace_bytes

MB = 1_000_000


def test_saved_tensors_stay_counted_until_backward_frees_them() -> None:
    with FakeTensorMode():
        x = torch.empty(250_000, requires_grad=True)            # 1 MB, resident
        tracker = LiveBytesTracker("cpu", resident=[x])
        with tracker:
            y = (x * 2).exp()         # x*2 is not needed for backward (freed), exp saves its output (1 MB)
            loss = y.sum()
            del y                     # Python drops y, but autograd still holds exp's output
            assert tracker.live >= 1 * MB
            after_forward = tracker.live
            loss.backward()
            del loss
            assert tracker.live == x.grad.untyped_storage().nbytes()   # only the gradient remains
        assert after_forward < 1.1 * MB
        assert 2 * MB <= tracker.peak < 3.1 * MB     # exp output + the grad_output and grad of x in backward


def test_views_and_inplace_ops_are_not_counted_twice() -> None:
    with FakeTensorMode():
        tracker = LiveBytesTracker("cpu")
        with tracker:
            a = torch.zeros(1000, 1000)
            a.add_(1.0)
            b = a[:10].view(-1)
            assert tracker.live == 4 * MB
            del a, b
            assert tracker.live == 0


def test_item_answers_a_standin_value() -> None:
    with FakeTensorMode():
        with LiveBytesTracker("cpu"):
            assert isinstance(float(torch.ones(()).sum()), float)


def test_onednn_workspace_model() -> None:
    aten = torch.ops.aten
    with FakeTensorMode():
        x = torch.empty(1, 27, 8, 8, 8)
        w = torch.empty(3, 27, 3, 3, 3)
        grad = torch.empty(1, 3, 8, 8, 8)
        fwd = (x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1)
        bwd = (grad, x, w, [3], [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1, [True, True, True])
        # channels padded to the block: 27 -> 32 (src), 3 -> 16 (dst); forward keeps the larger one
        assert hidden_workspace_bytes(aten.convolution.default, fwd, 16) == 32 * 512 * 4
        assert hidden_workspace_bytes(aten.convolution_backward.default, bwd, 16) == (32 + 16) * 512 * 4
        assert hidden_workspace_bytes(aten.convolution.default, fwd, 8) == 32 * 512 * 4
        assert hidden_workspace_bytes(aten.add.Tensor, (x, x), 16) == 0
