"""The add-on modules on their own: bilateral filter (BF), large kernels (LK), co-attention (CA)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from nnreg.networks.bilateral import JointBilateralFilter
from nnreg.networks.co_attention import CoAttention
from nnreg.networks.large_kernel import LargeKernelConv


def naive_separable_bilateral(field: np.ndarray, guide: np.ndarray, radius: int, ss: float, si: float) -> np.ndarray:
    """Per-voxel loops: three 1-D joint bilateral passes with clamped (replicate) borders."""
    out = field.astype(np.float64).copy()
    shape = guide.shape
    for axis in range(3):
        src, res = out.copy(), np.zeros_like(out)
        for idx in itertools.product(*[range(n) for n in shape]):
            num, den = np.zeros(field.shape[0]), 0.0
            for o in range(-radius, radius + 1):
                j = list(idx)
                j[axis] = min(max(j[axis] + o, 0), shape[axis] - 1)
                w = math.exp(-o * o / (2 * ss * ss) - (guide[idx] - guide[tuple(j)]) ** 2 / (2 * si * si))
                num += w * src[(slice(None), *j)]
                den += w
            res[(slice(None), *idx)] = num / den
        out = res
    return out


def test_bilateral_matches_naive_reference():
    rng = np.random.default_rng(0)
    field, guide = rng.standard_normal((3, 5, 6, 7)), rng.random((5, 6, 7))
    bf = JointBilateralFilter(kernel_size=5, sigma_spatial=1.3, sigma_intensity=0.2).double()
    got = bf(torch.from_numpy(field)[None], torch.from_numpy(guide)[None, None])[0].detach().numpy()
    ss, si = bf.sigmas  # the float32-initialised parameters, not exactly 1.3 and 0.2
    assert abs(ss - 1.3) < 1e-6 and abs(si - 0.2) < 1e-6
    np.testing.assert_allclose(got, naive_separable_bilateral(field, guide, 2, ss, si), atol=1e-10)


def test_bilateral_preserves_a_constant_field():
    bf = JointBilateralFilter()
    constant = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1).expand(2, 3, 9, 10, 11).contiguous()
    guide = torch.rand(2, 1, 9, 10, 11)
    torch.testing.assert_close(bf(constant, guide), constant, atol=1e-6, rtol=0)


def test_bilateral_smooths_but_keeps_guide_edges():
    bf = JointBilateralFilter(kernel_size=5, sigma_spatial=2.0, sigma_intensity=0.05)
    shape = (16, 8, 8)
    noise = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    assert bf(noise, torch.zeros(1, 1, *shape)).std() < 0.6 * noise.std()
    step = torch.zeros(1, 3, *shape)
    step[:, :, 8:] = 1.0
    edge_guide = step[:, :1].clone()
    kept = bf(step, edge_guide)
    blurred = bf(step, torch.zeros(1, 1, *shape))
    assert (kept - step).abs().max() < 1e-3
    assert (blurred - step).abs().max() > 0.2


def test_bilateral_sigmas_are_trainable_and_positive():
    bf = JointBilateralFilter()
    field = torch.randn(1, 3, 6, 7, 8)
    bf(field, torch.rand(1, 1, 6, 7, 8)).square().sum().backward()
    assert bf.log_sigma_spatial.grad is not None and bf.log_sigma_spatial.grad != 0
    assert bf.log_sigma_intensity.grad is not None and bf.log_sigma_intensity.grad != 0
    assert all(s > 0 for s in bf.sigmas)
    with pytest.raises(ValueError):
        bf(field, torch.rand(1, 1, 6, 7, 9))


@pytest.mark.parametrize("cin,cout", [(6, 6), (4, 6)])
def test_large_kernel_reparameterisation_is_exact(cin, cout):
    torch.manual_seed(0)
    conv = LargeKernelConv(cin, cout, 5).double()
    x = torch.randn(2, cin, 7, 8, 9, dtype=torch.float64, requires_grad=True)
    branches = conv(x)  # autograd on: branch sum
    with torch.no_grad():
        merged = conv(x)  # one merged K³ convolution
    torch.testing.assert_close(merged, branches.detach())
    expected = conv.large(x) + conv.small(x) + conv.point(x) + (x if cin == cout else 0)
    torch.testing.assert_close(branches, expected)
    with pytest.raises(ValueError):
        LargeKernelConv(4, 4, 4)


def test_co_attention_is_symmetric_and_trainable():
    torch.manual_seed(0)
    ca = CoAttention(8).double()
    f, m = torch.randn(1, 8, 3, 4, 5, dtype=torch.float64), torch.randn(1, 8, 3, 4, 5, dtype=torch.float64)
    f2, m2 = ca(f, m)
    assert f2.shape == f.shape and m2.shape == m.shape
    m3, f3 = ca(m, f)  # shared projections: swapping the streams swaps the outputs
    torch.testing.assert_close(f2, f3)
    torch.testing.assert_close(m2, m3)
    assert (f2 - f).abs().max() > 1e-3
    (f2.sum() + m2.square().sum()).backward()
    assert ca.query.weight.grad.abs().sum() > 0 and ca.key.weight.grad.abs().sum() > 0
    # the fixed output depends on the moving features (information flows between the streams)
    m_changed = m.clone()
    m_changed[:, :, 0, 0, 0] += 5.0
    assert (ca(f, m_changed)[0] - f2).abs().max() > 1e-4


def test_conv_norm_act_inference_path_matches_autograd_path():
    from nnreg.networks.blocks import ConvNormAct

    torch.manual_seed(0)
    block = ConvNormAct(4, 8).double()
    x = torch.randn(2, 4, 6, 7, 8, dtype=torch.float64) * 3 + 5
    reference = block(x.requires_grad_())
    with torch.no_grad():
        fast = block(x)
    torch.testing.assert_close(fast, reference.detach())
