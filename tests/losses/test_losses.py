"""Losses against direct, independent computations (numpy loops, scipy filters, block means)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.losses import DeepSupervisedRegistrationLoss, gradient_l2, level_weights, local_ncc, local_ncc_loss


def _brute_force_cc(i: np.ndarray, j: np.ndarray, w: int, eps: float = 1e-5) -> np.ndarray:
    """Per-voxel cc with explicit windows over zero-padded float64 arrays."""
    p = w // 2
    ip, jp = np.pad(i, p), np.pad(j, p)
    n = w ** 3
    out = np.zeros(i.shape)
    for x in range(i.shape[0]):
        for y in range(i.shape[1]):
            for z in range(i.shape[2]):
                a = ip[x:x + w, y:y + w, z:z + w].ravel()
                b = jp[x:x + w, y:y + w, z:z + w].ravel()
                cross = (a * b).sum() - a.sum() * b.sum() / n
                va = (a * a).sum() - a.sum() ** 2 / n
                vb = (b * b).sum() - b.sum() ** 2 / n
                out[x, y, z] = cross ** 2 / (va * vb + eps)
    return out


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


@pytest.mark.parametrize("window", [3, 5, 9])
def test_local_ncc_matches_brute_force(window: int) -> None:
    rng = np.random.default_rng(window)
    i = ndimage.gaussian_filter(rng.random((9, 11, 8)), 1.0)
    j = 0.6 * i + 0.4 * ndimage.gaussian_filter(rng.random((9, 11, 8)), 1.0)
    got = local_ncc(_t(i), _t(j), window)[0, 0].double().numpy()
    want = _brute_force_cc(i, j, window)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4)
    assert float(local_ncc_loss(_t(i), _t(j), window)) == pytest.approx(-want.mean(), rel=1e-3)


def test_local_ncc_window9_matches_uniform_filter_at_larger_size() -> None:
    rng = np.random.default_rng(3)
    i = ndimage.gaussian_filter(rng.random((24, 28, 20)), 1.5)
    j = ndimage.shift(i, (1.3, -0.7, 0.4), order=1) + 0.05 * rng.random(i.shape)
    n = 9 ** 3
    sums = [ndimage.uniform_filter(a, 9, mode="constant") * n for a in (i, j, i * i, j * j, i * j)]
    cross = sums[4] - sums[0] * sums[1] / n
    cc = cross ** 2 / ((sums[2] - sums[0] ** 2 / n) * (sums[3] - sums[1] ** 2 / n) + 1e-5)
    got = float(local_ncc_loss(_t(i), _t(j), 9))
    assert got == pytest.approx(-cc.mean(), rel=1e-3)


def test_local_ncc_is_invariant_to_affine_intensity_and_drops_with_misalignment() -> None:
    rng = np.random.default_rng(4)
    i = ndimage.gaussian_filter(rng.random((20, 20, 20)), 1.0) * 10
    same = float(local_ncc_loss(_t(i), _t(3 * i + 2), 5))
    shifted = float(local_ncc_loss(_t(i), _t(np.roll(i, 3, axis=0)), 5))
    assert same < -0.99
    assert shifted > same + 0.2


def test_local_ncc_rejects_even_window() -> None:
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="odd"):
        local_ncc(x, x, 4)


def test_gradient_l2_matches_numpy_diff() -> None:
    rng = np.random.default_rng(5)
    u = rng.standard_normal((2, 3, 6, 7, 5))
    want = np.mean([np.mean(np.diff(u, axis=a) ** 2) for a in (2, 3, 4)])
    assert float(gradient_l2(torch.from_numpy(u).float())) == pytest.approx(want, rel=1e-5)
    assert float(gradient_l2(torch.ones(1, 3, 4, 4, 4) * 7)) == 0.0


def test_level_weights_halve_towards_coarse_levels() -> None:
    assert level_weights(5) == [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]
    assert level_weights(1) == [1.0]
    with pytest.raises(ValueError):
        level_weights(0)


def _block_mean(a: np.ndarray) -> np.ndarray:
    h, w, d = (s // 2 for s in a.shape)
    return a[:2 * h, :2 * w, :2 * d].reshape(h, 2, w, 2, d, 2).mean(axis=(1, 3, 5))


def test_deep_supervision_sums_weighted_levels_on_box_averaged_pyramid() -> None:
    rng = np.random.default_rng(6)
    fixed = ndimage.gaussian_filter(rng.random((16, 16, 16)), 1.0)
    moving = ndimage.gaussian_filter(rng.random((16, 16, 16)), 1.0)
    shapes = [(4, 4, 4), (8, 8, 8), (16, 16, 16)]
    velocities = [torch.from_numpy(rng.standard_normal((1, 3, *s)) * 0.1).float() for s in shapes]
    levels = [SimpleNamespace(displacement=torch.zeros(1, 3, *s), velocity=v) for s, v in zip(shapes, velocities)]
    output = SimpleNamespace(displacement=levels[-1].displacement, levels=levels)
    loss = DeepSupervisedRegistrationLoss(lambda_ncc=1.0, lambda_reg=6.0, ncc_window=3)
    total, parts = loss(_t(moving), _t(fixed), output)

    f_pyr, m_pyr = [fixed], [moving]
    for _ in range(2):
        f_pyr.insert(0, _block_mean(f_pyr[0]))
        m_pyr.insert(0, _block_mean(m_pyr[0]))
    want = 0.0
    for w, f, m, v in zip([0.25, 0.5, 1.0], f_pyr, m_pyr, velocities):
        vn = v.double().numpy()
        reg = np.mean([np.mean(np.diff(vn, axis=a) ** 2) for a in (2, 3, 4)])
        want += w * (-_brute_force_cc(f, m, 3).mean() + 6.0 * reg)
    assert float(total) == pytest.approx(want, rel=1e-3)
    assert parts["ncc"] == pytest.approx(-_brute_force_cc(fixed, moving, 3).mean(), rel=1e-3)

    single = DeepSupervisedRegistrationLoss(lambda_reg=6.0, ncc_window=3, deep_supervision=False)
    total_single, _ = single(_t(moving), _t(fixed), output)
    assert float(total_single) == pytest.approx(-_brute_force_cc(fixed, moving, 3).mean(), rel=1e-3)


def test_deep_supervision_gradient_reaches_every_level() -> None:
    shapes = [(4, 4, 4), (8, 8, 8)]
    vel = [torch.zeros(1, 3, *s, requires_grad=True) for s in shapes]
    disp = [torch.zeros(1, 3, *s, requires_grad=True) for s in shapes]
    levels = [SimpleNamespace(displacement=d, velocity=v) for d, v in zip(disp, vel)]
    rng = np.random.default_rng(7)
    img = [_t(ndimage.gaussian_filter(rng.random((8, 8, 8)), 1.0)) for _ in range(2)]
    total, _ = DeepSupervisedRegistrationLoss(ncc_window=3)(img[0], img[1],
                                                             SimpleNamespace(displacement=disp[-1], levels=levels))
    total.backward()
    assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in disp)
