"""MIND-SSC against an independent numpy evaluation of its definition, its invariance to intensity maps that keep
local structure, its sensitivity to misalignment, and float32 under autocast."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.losses.mind import SSC_PAIRS, VARIANCE_CLAMP, mind_loss, mind_ssc

SHAPE = (14, 16, 12)


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(SHAPE), 1.2)
    return ((image - image.min()) / np.ptp(image)).astype(np.float32)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]


def _reference(image: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """The definition, evaluated with numpy/scipy: edge-padded shifts, ``uniform_filter`` patch means (nearest
    border), the variance clamp relative to its image mean, normalised by the channel maximum."""
    x = image.astype(np.float64)
    padded = np.pad(x, dilation, mode="edge")
    offsets = [v for v in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, v)) == 1]
    pairs = [(a, b) for a, b in itertools.combinations(offsets, 2)
             if np.isclose(np.linalg.norm(np.subtract(a, b)), np.sqrt(2))]
    assert len(pairs) == 12

    def shifted(o):
        return padded[tuple(slice(dilation + dilation * k, dilation + dilation * k + n) for k, n in zip(o, SHAPE))]

    distance = np.stack([ndimage.uniform_filter((shifted(a) - shifted(b)) ** 2, 2 * radius + 1, mode="nearest")
                         for a, b in pairs])
    variance = distance.mean(0)
    variance = np.clip(variance, variance.mean() * VARIANCE_CLAMP[0], variance.mean() * VARIANCE_CLAMP[1])
    descriptor = np.exp(-distance / variance)
    return descriptor / descriptor.max(0), pairs


def test_the_pairs_are_the_twelve_sqrt2_pairs_of_the_six_neighbourhood() -> None:
    _, reference_pairs = _reference(_image(), 1, 1)
    ours = {frozenset(p) for p in SSC_PAIRS}
    assert len(ours) == 12 and ours == {frozenset(p) for p in reference_pairs}


@pytest.mark.parametrize("radius, dilation", [(1, 1), (1, 2), (0, 2), (2, 1)])
def test_descriptor_matches_the_definition(radius: int, dilation: int) -> None:
    image = _image(1)
    expected, pairs = _reference(image, radius, dilation)
    # our channel order is SSC_PAIRS': reorder the reference's to it
    order = [[frozenset(p) for p in pairs].index(frozenset(q)) for q in SSC_PAIRS]
    ours = mind_ssc(_tensor(image), radius, dilation)[0].numpy()
    assert ours.shape == (12, *SHAPE)
    np.testing.assert_allclose(ours, expected[order], atol=2e-5)


def test_affine_and_inverted_contrast_give_the_same_descriptor() -> None:
    image = _image(2)
    base = mind_ssc(_tensor(image))
    for mapped in (3.0 * image + 7.0, 1.0 - image, 250.0 - 40.0 * image):
        np.testing.assert_allclose(mind_ssc(_tensor(mapped)).numpy(), base.numpy(), atol=1e-4)


def test_the_loss_sees_misalignment_more_than_a_contrast_change() -> None:
    image = _image(3)
    t2_like = (1.0 - image) ** 2 + 0.3 * np.sin(3 * image)      # non-linear, mostly inverted contrast
    shifted = np.roll(image, 2, axis=0)
    same_structure = float(mind_loss(_tensor(image), _tensor(t2_like)))
    misaligned = float(mind_loss(_tensor(image), _tensor(shifted)))
    assert same_structure < 0.3 * misaligned


def test_float32_and_finite_gradients_under_bf16_autocast() -> None:
    fixed = _tensor(_image(4))
    moving = _tensor(_image(5)).requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        descriptor = mind_ssc(moving.to(torch.bfloat16))
        loss = mind_loss(fixed, moving)
    assert descriptor.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(moving.grad).all() and float(moving.grad.abs().max()) > 0
    plain = mind_loss(fixed, moving.detach())
    assert float(loss.detach()) == pytest.approx(float(plain), rel=1e-6)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="B, 1, H, W, D"):
        mind_ssc(torch.zeros((1, 2, 4, 4, 4)))
    with pytest.raises(ValueError, match="dilation"):
        mind_ssc(torch.zeros((1, 1, 4, 4, 4)), dilation=0)
