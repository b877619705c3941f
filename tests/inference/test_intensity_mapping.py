"""The conditional-mean intensity mapping (nnreg.inference.intensity_mapping) and the remapped local NCC stage of a
MIND-SSC refinement: a contrast that is a function of the fixed image's is mapped back onto it (checked against an
independent per-label computation with numpy), zeros stay zeros, and the stage lowers a multi-modal pair's error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnreg.inference.instance_optimization import refine_field
from nnreg.inference.intensity_mapping import apply_mapping, conditional_mean_mapping
from nnreg.inference.refinement_settings import InstanceOptimization
from tests.inference.helpers import textured_pair


def _labels(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Three nested 'tissues' (1, 2, 3) inside a zero background, with some texture of their boundaries."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0)) + 0.05 * rng.standard_normal(shape)
    labels = np.zeros(shape, dtype=np.int64)
    labels[radius < 0.9] = 1
    labels[radius < 0.6] = 2
    labels[radius < 0.3] = 3
    return labels


def test_mapping_inverts_a_non_monotonic_contrast() -> None:
    labels = _labels((24, 28, 20))
    t1 = np.array([0.0, 0.3, 0.6, 1.0], dtype=np.float32)[labels]       # dark, grey, white
    flair = np.array([0.0, 0.2, 0.9, 0.5], dtype=np.float32)[labels]    # another order: not monotonic in t1
    fixed, moving = torch.from_numpy(t1)[None, None], torch.from_numpy(flair)[None, None]
    t, f = conditional_mean_mapping(fixed, moving, bins=8)
    mapped = apply_mapping(moving, t, f)[0, 0].numpy()
    for label in (1, 2, 3):                                             # each tissue back at its fixed intensity
        np.testing.assert_allclose(mapped[labels == label], t1[labels == label], atol=1e-6)
    assert (mapped[labels == 0] == 0).all()


def test_mapping_is_the_conditional_mean_per_bin() -> None:
    """With noise, each of the few distinct moving intensities maps to the mean fixed intensity over its voxels
    (numpy, per label), not to a value of one voxel."""
    labels = _labels((20, 20, 20), seed=1)
    rng = np.random.default_rng(2)
    fixed = (np.array([0.0, 0.3, 0.6, 1.0])[labels] + 0.05 * rng.standard_normal(labels.shape)) * (labels > 0)
    moving = np.array([0.0, 0.7, 0.4, 0.1])[labels]
    t, f = conditional_mean_mapping(torch.tensor(fixed, dtype=torch.float32)[None, None],
                                    torch.tensor(moving, dtype=torch.float32)[None, None], bins=3)
    mapped = apply_mapping(torch.tensor(moving, dtype=torch.float32)[None, None], t, f)[0, 0].numpy()
    for label in (1, 2, 3):
        expected = fixed[(labels == label) & (fixed != 0)].mean()
        assert abs(float(mapped[labels == label][0]) - expected) < 0.02, label


def test_continuous_intensities_map_through_quantile_intervals() -> None:
    """Many distinct intensities (the quantile branch): a fixed image that is a smooth decreasing function of the
    moving one plus noise is recovered within the noise, up to the brightest voxel (no one-voxel last interval), and
    a NaN voxel is left out of the estimate."""
    rng = np.random.default_rng(4)
    moving = rng.uniform(0.1, 1.0, size=(30, 30, 30))
    fixed = 1.2 - moving ** 2 + 0.05 * rng.standard_normal(moving.shape)
    fixed[0, 0, 0] = np.nan
    t, f = conditional_mean_mapping(torch.tensor(fixed, dtype=torch.float32)[None, None],
                                    torch.tensor(moving, dtype=torch.float32)[None, None])
    assert 30 <= t.numel() <= 65 and bool(torch.isfinite(f).all())
    probe = torch.tensor([0.15, 0.5, 0.9, float(moving.max())]).reshape(1, 1, 4, 1, 1)
    mapped = apply_mapping(probe, t, f).flatten().numpy()
    np.testing.assert_allclose(mapped, 1.2 - probe.flatten().numpy() ** 2, atol=0.03)


def test_linear_between_points_and_constant_beyond() -> None:
    t, f = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([10.0, 20.0, 0.0])
    image = torch.tensor([0.0, 0.5, 1.5, 3.0, 9.0]).reshape(1, 1, 5, 1, 1)
    out = apply_mapping(image, t, f).flatten().tolist()
    assert out == pytest.approx([0.0, 10.0, 15.0, 10.0, 0.0])


def test_no_overlap_is_an_error() -> None:
    a = torch.zeros(1, 1, 8, 8, 8)
    b = torch.zeros(1, 1, 8, 8, 8)
    a[..., :4] = 1.0
    b[..., 4:] = 1.0
    with pytest.raises(ValueError, match="overlap"):
        conditional_mean_mapping(a, b)


def test_remapped_stage_finishes_a_mind_refinement() -> None:
    """On a pair whose moving image has an inverted, non-linear contrast, MIND then the remapped local NCC stage ends
    closer to the known displacement than MIND alone, and the report counts the extra steps."""
    def shift(x: np.ndarray) -> np.ndarray:
        return 1.5 * np.stack([np.sin(2 * np.pi * x[1] / 28), np.cos(2 * np.pi * x[2] / 24),
                               np.sin(2 * np.pi * x[0] / 24)])

    shape = (24, 28, 24)
    fixed_np, moving_np = textured_pair(shape, seed=3, sigma=1.5, border=3, shift=shift)
    truth = torch.from_numpy(shift(np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float64)))[None].float()
    fixed, moving = torch.from_numpy(fixed_np)[None, None], torch.from_numpy(moving_np)[None, None]
    inverted = torch.where(moving > 0, 1.2 - moving ** 2, torch.zeros_like(moving))
    base = InstanceOptimization(steps=30, fine_steps=10, lambda_reg=0.3, similarity="mind", integration_steps=3)
    zero = torch.zeros((1, 3, *fixed.shape[2:]))
    plain, plain_report = refine_field(fixed, inverted, zero, base)
    remapped, report = refine_field(fixed, inverted, zero, base.with_overrides({"remap_steps": 15}))
    inside = (fixed[0, 0] > 0)

    def error(field: torch.Tensor) -> float:
        return float((field - truth).norm(dim=1)[0][inside].mean())

    assert report.steps_run > plain_report.steps_run and not report.kept_network
    assert report.remapped and not plain_report.remapped
    assert error(remapped) < error(plain)
