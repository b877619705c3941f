"""The local NCC is bounded in [0, 1] with bounded gradients on the images that broke the old version:
large zero backgrounds, constant regions, long axes, bf16 autocast, and a real 2 mm pair. Gradients are compared with
a float64 reference, not with a worst-case bound (which allowed ~30 per voxel where they are ~1e-4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from nnreg.losses import local_ncc, local_ncc_loss
from nnreg.losses.ncc import EPS, box_sum
from tests.conftest import shared_dataset


def _reference_gradient(fixed: torch.Tensor, warped: torch.Tensor, window: int, eps: float = EPS) -> torch.Tensor:
    """``d(-mean cc) / d warped`` in float64 with an independent window sum (separable ``conv3d`` with kernels of ones,
    zero padding): the gradient the float32 loss must reproduce wherever float32 can resolve the window variances."""
    i = fixed.detach().double()
    j = warped.detach().double().requires_grad_(True)

    def window_sum(x: torch.Tensor) -> torch.Tensor:
        for axis in range(3):
            size, pad = [1, 1, 1], [0, 0, 0]
            size[axis], pad[axis] = window, window // 2
            x = F.conv3d(x, torch.ones(1, 1, *size, dtype=torch.float64), padding=tuple(pad))
        return x

    s_i, s_j, s_ii, s_jj, s_ij = (window_sum(x) for x in (i, j, i * i, j * j, i * j))
    n = float(window ** 3)
    cross = s_ij - s_i * s_j / n
    product = (s_ii - s_i * s_i / n).clamp_min(0.0) * (s_jj - s_j * s_j / n).clamp_min(0.0)
    (-(torch.minimum(cross * cross, product) / (product + eps)).mean()).backward()
    assert j.grad is not None
    return j.grad


def _brain_like(shape: tuple[int, int, int], seed: int, shift: float = 0.0) -> np.ndarray:
    """Textured ellipsoid 'brain' with a flat plateau inside, in a large exact-zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = ((grid[0] - shift) ** 2 / 0.5 + grid[1] ** 2 / 0.6 + grid[2] ** 2 / 0.45) < 1
    texture = ndimage.gaussian_filter(rng.random(shape), 1.2)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    image = np.where(inside, 0.3 + 0.7 * texture, 0.0)
    image[tuple(slice(s // 2 - 3, s // 2 + 3) for s in shape)] = 0.8          # a constant region
    return image.astype(np.float32)


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None].requires_grad_(grad)


def _check_bounded(fixed: torch.Tensor, warped: torch.Tensor, window: int, resolvable: bool = True) -> torch.Tensor:
    """Values in [0, 1], and the gradient is the float64 reference's (to 1e-3 of its largest entry) where float32 can
    resolve the window variances (``resolvable``), otherwise no larger than the reference's largest entry: a loss
    blind to a structure float32 cannot see gives a smaller gradient, never a spike."""
    cc = local_ncc(fixed, warped, window)
    values = cc.detach()
    assert torch.isfinite(values).all()
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    (-cc.mean()).backward()
    grad = warped.grad
    assert grad is not None and torch.isfinite(grad).all()
    reference = _reference_gradient(fixed, warped, window)
    scale = float(reference.abs().max())
    assert scale > 0.0
    if resolvable:
        torch.testing.assert_close(grad.double(), reference, rtol=0.0, atol=1e-3 * scale)
    else:
        assert float(grad.abs().max()) <= scale
    return cc


@pytest.mark.parametrize("window", [3, 9])
def test_bounded_on_zero_background_constant_region_and_texture(window: int) -> None:
    shape = (40, 48, 36)
    fixed = _t(_brain_like(shape, 0))
    warped = _t(_brain_like(shape, 1, shift=0.1), grad=True)
    cc = _check_bounded(fixed, warped, window)
    background = ((fixed[0, 0] == 0) & (warped[0, 0].detach() == 0)).numpy()
    far = torch.from_numpy(ndimage.binary_erosion(background, np.ones((window,) * 3), border_value=1))
    assert int(far.sum()) > 1000
    assert float(cc.detach()[0, 0][far].abs().max()) == 0.0        # an all-zero window scores exactly 0


def test_bounded_for_constant_images_and_large_offsets() -> None:
    flat = torch.full((1, 1, 12, 14, 10), 0.7)
    warped = (flat.clone() + 1e-4 * torch.rand(flat.shape, generator=torch.Generator().manual_seed(0)))
    _check_bounded(flat, warped.requires_grad_(True), 5, resolvable=False)
    rng = np.random.default_rng(2)
    texture = ndimage.gaussian_filter(rng.random((16, 18, 14)), 1.0)
    fixed = _t(1000.0 + texture)                      # variances cancel catastrophically in float32
    _check_bounded(fixed, _t(1000.0 + np.roll(texture, 1, axis=0), grad=True), 9, resolvable=False)
    _check_bounded(_t(texture), _t(np.roll(texture, 1, axis=0), grad=True), 9)      # without the offset: exact


def test_bounded_along_a_lumir_length_axis() -> None:
    rng = np.random.default_rng(3)
    image = np.zeros((10, 224, 10), np.float32)
    image[:, 20:200] = ndimage.gaussian_filter(rng.random((10, 180, 10)), 1.0)
    _check_bounded(_t(image), _t(np.roll(image, 2, axis=1), grad=True), 9)


def test_box_sum_matches_float64_filter_and_keeps_zeros_exact() -> None:
    rng = np.random.default_rng(4)
    x = rng.random((3, 1, 20, 30, 25)).astype(np.float32)
    x[:, :, :, 10:20] = 0.0
    got = box_sum(torch.from_numpy(x), 9).double().numpy()
    want = np.stack([ndimage.uniform_filter(a.astype(np.float64), 9, mode="constant") * 9 ** 3
                     for a in x[:, 0]])[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    assert np.all(got[:, :, :, 14:16] == 0.0)          # windows entirely inside the zero slab
    zeros = torch.zeros(1, 1, 12, 12, 12)
    assert float(box_sum(zeros, 9).abs().max()) == 0.0


def test_box_sum_gradient_is_the_adjoint() -> None:
    """The custom backward (box sum of the incoming gradient) is the exact adjoint: float64 gradcheck, and the same
    gradient as autograd through the window sums themselves."""
    from nnreg.losses.ncc import _window_sums

    x = torch.rand(2, 1, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, 3), (x,))
    weights = torch.rand(2, 1, 6, 7, 5, dtype=torch.float64)
    got, = torch.autograd.grad((box_sum(x, 5) * weights).sum(), x)
    want, = torch.autograd.grad((_window_sums(x, 5) * weights).sum(), x)
    torch.testing.assert_close(got, want)


def test_bf16_autocast_gives_the_float32_values() -> None:
    shape = (24, 28, 20)
    fixed = _t(_brain_like(shape, 5))
    warped = _t(_brain_like(shape, 6, shift=0.05))
    want = local_ncc_loss(fixed, warped, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = local_ncc_loss(fixed, warped, 9)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    warped_bf16 = warped.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cc = local_ncc(fixed.bfloat16(), warped_bf16, 9)
    assert float(cc.detach().min()) >= 0.0 and float(cc.detach().max()) <= 1.0
    (-cc.mean()).backward()
    assert torch.isfinite(warped_bf16.grad.float()).all()


def test_rejects_non_positive_eps() -> None:
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="eps"):
        local_ncc(x, x, 3, eps=0.0)


@pytest.mark.shared_data
def test_real_2mm_pair_is_bounded_with_bounded_gradients() -> None:
    nib = pytest.importorskip("nibabel")
    folder = shared_dataset("OpenBrains80") / "imagesVal"
    images = [nib.load(folder / f"OBR_{k:04d}_0000.nii.gz").get_fdata().astype(np.float32) / 255.0
              for k in (8, 9)]
    fixed, warped = _t(images[0]), _t(images[1], grad=True)
    _check_bounded(fixed, warped, 9)
    g = warped.grad.abs().flatten()
    # the old cumulative-sum version: max 3.1e3 against a median of 6e-7 on this pair
    assert float(g.max()) < 1e-2


def test_target_windows_give_local_ncc_bitwise_and_the_same_gradient() -> None:
    """The refinement's fixed-image sums computed once (:class:`TargetWindows`) against the five-sum formula written
    out here (zero-padded window sums by ``F.pad`` and ``unfold``)."""
    from nnreg.losses.ncc import TargetWindows

    def sums(x: torch.Tensor, w: int) -> torch.Tensor:
        p = w // 2
        for axis in range(3):
            spec = [0] * 6
            spec[(2 - axis) * 2] = spec[(2 - axis) * 2 + 1] = p
            x = F.pad(x, spec).unfold(2 + axis, w, 1).sum(-1)
        return x

    g = torch.Generator().manual_seed(5)
    fixed = torch.rand(1, 1, 13, 11, 15, generator=g)
    fixed[..., :4] = 0
    windows = TargetWindows(fixed, 5)
    for _ in range(2):
        warped = torch.rand(1, 1, 13, 11, 15, generator=g, requires_grad=True)
        i, j, n = fixed, warped, 125.0
        s = [sums(t, 5) for t in (i, j, i * i, j * j, i * j)]
        cross = s[4] - s[0] * s[1] / n
        var_i, var_j = (s[2] - s[0] * s[0] / n).clamp_min(0), (s[3] - s[1] * s[1] / n).clamp_min(0)
        expected = torch.minimum(cross * cross, var_i * var_j) / (var_i * var_j + 1e-5)
        got = windows.cc(warped)
        assert torch.equal(got, expected)
        assert torch.equal(local_ncc(fixed, warped, 5), expected)
        want, = torch.autograd.grad(expected.sum(), warped)
        have, = torch.autograd.grad(windows.cc(warped).sum(), warped)
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6)


def test_variance_floor_zeroes_only_what_float32_cannot_resolve() -> None:
    """Window variances are float64's where they stand clear of float32's cancellation error, and exactly 0 where they
    are below ``8 w`` epsilons of the window's sum of squares: inside a 1000-offset texture (its border windows, half
    zero padding, keep their large variance)."""
    from nnreg.losses.ncc import TargetWindows

    rng = np.random.default_rng(7)
    texture = ndimage.gaussian_filter(rng.random((14, 16, 12)), 1.0)
    for offset, window in ((0.0, 9), (0.5, 5), (1000.0, 9)):
        image = offset + texture
        windows = TargetWindows(_t(image), window)
        exact = ndimage.uniform_filter(image * image, window, mode="constant") * window ** 3
        total = ndimage.uniform_filter(image, window, mode="constant") * window ** 3
        variance = exact - total * total / window ** 3
        got = windows.var_i[0, 0].double().numpy()
        clear = variance > 1e-3 * exact
        resolved_below = variance < 8 * window * float(np.finfo(np.float32).eps) * exact / 4
        if offset < 1.0:
            assert clear.mean() > 0.5
            np.testing.assert_allclose(got[clear], variance[clear], rtol=1e-3)
        else:                                           # interior windows (the border ones take in zero padding)
            inner = tuple(slice(window // 2, n - window // 2) for n in image.shape)
            assert resolved_below[inner].all() and not clear[inner].any()
            assert float(np.abs(got[inner]).max()) == 0.0
            np.testing.assert_allclose(got[~resolved_below], variance[~resolved_below], rtol=1e-3)
