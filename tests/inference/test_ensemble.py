"""Fold ensembling never has a higher official NDV than the best single fold; the guard catches averages that fold."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from nnreg.evaluation import ndv
from nnreg.inference import nnRegPredictor
from nnreg.inference.ensemble import ensemble_displacements, official_ndv
from nnreg.planning.plans import ConfigurationPlan
from nnreg.spatial import integrate_velocity
from tests.inference.helpers import OracleNet

SHAPE = (40, 40, 40)


def _velocity(rng: np.random.Generator, amplitude: float, sigma: float) -> np.ndarray:
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), sigma) for _ in range(3)])
    return v / np.abs(v).max() * amplitude


def _ndv(disp: torch.Tensor) -> float:
    return ndv(disp[0].permute(1, 2, 3, 0).numpy())


def test_mean_of_diffeomorphic_folds_does_not_fold_more_than_a_fold() -> None:
    """Five 'folds' = exp(shared velocity + fold-specific velocity), large enough that single folds fold a little
    (as trained networks do): the ensembled field's NDV stays at (here: below) the single folds' level."""
    rng = np.random.default_rng(0)
    shared = _velocity(rng, 12.0, 3.0)
    folds = [integrate_velocity(torch.from_numpy(shared + _velocity(rng, 6.0, 3.0))[None].float()) for _ in range(5)]
    single = [_ndv(f) for f in folds]
    assert max(single) > 0, "the test needs folds that fold a little"
    mean = torch.stack(folds).mean(0)
    assert _ndv(mean) <= float(np.mean(single))   # averaging reduces folding on average
    field, report = ensemble_displacements(folds)
    assert _ndv(field) <= min(single) + 1e-12        # the guard: never above the best fold
    assert report.used == "mean" if _ndv(mean) <= min(single) else report.used.startswith("fold:")


def _linear_field(matrix: np.ndarray) -> torch.Tensor:
    """u(x) = (A - I)(x - c): the linear map A about the grid centre, as a voxel-unit field (1, 3, *SHAPE)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij"))
    disp = np.einsum("rc,c...->r...", matrix - np.eye(3), grid)
    return torch.from_numpy(disp)[None].float()


def test_an_ensemble_whose_mean_folds_falls_back_to_the_best_fold() -> None:
    """det A1 = 1, det A2 = 1.2 > 0, but det((A1 + A2) / 2) < 0: the plain mean folds everywhere; the official NDV
    (independent: nnreg.evaluation.ndv on the (H, W, D, 3) field) of the result is the best fold's."""
    first = _linear_field(np.eye(3))
    second = _linear_field(np.diag([-3.0, -0.4, 1.0]))
    assert _ndv(first) == 0 and _ndv(second) == 0
    assert _ndv((first + second) / 2) > 10     # percent of the volume
    field, report = ensemble_displacements([first, second])
    assert report.used.startswith("fold:") and report.ndv_mean > 0
    assert _ndv(field) == 0


def test_the_guard_uses_the_official_schemes_not_central_differences() -> None:
    """A checkerboard of +-0.9 voxels along axis 0 has central-difference Jacobian 1 everywhere (the differences
    skip the neighbour), but one-sided differences of 1 - 1.8 fold: the proxy would see nothing."""
    i = np.arange(SHAPE[0])[:, None, None] * np.ones(SHAPE)
    checker = np.zeros((3, *SHAPE))
    checker[0] = 0.9 * np.where(i % 2 == 0, 1.0, -1.0)
    folding = torch.from_numpy(checker)[None].float()
    from nnreg.spatial import jacobian_determinant

    assert int((jacobian_determinant(folding)[:, 1:-1, 1:-1, 1:-1] <= 0).sum()) == 0   # the old proxy
    smooth = torch.zeros_like(folding)
    field, report = ensemble_displacements([folding, folding, smooth])   # mean = 2/3 of the checkerboard: folds
    assert official_ndv(torch.stack([folding, folding, smooth]).mean(0)) > 0
    assert report.used == "fold:2" and torch.equal(field, smooth)


def test_predictor_averages_its_folds() -> None:
    config = ConfigurationPlan(
        data_identifier="t", spacing=[1.0] * 3, resampling_factor=[1.0] * 3, resampled_shape=[16, 16, 16],
        crop_start=[0, 0, 0], shape=[16, 16, 16], normalization={"scheme": "fixed_range", "lower": 0, "upper": 255},
        batch_size=1, architecture={})
    one = np.full((3, 16, 16, 16), 0.5, np.float32)
    network = OracleNet(one)
    weights = [{"field": torch.from_numpy(one)[None]}, {"field": torch.from_numpy(3 * one)[None]}]
    predictor = nnRegPredictor(num_threads=1).manual_initialization(network, config, weights)
    image = np.full((16, 16, 16), 100.0, np.float32)
    field = predictor.predict_pair(image, image)
    np.testing.assert_allclose(field, 1.0, atol=1e-6)
    assert predictor.last_ensemble is not None and predictor.last_ensemble.num_folds == 2


def test_weights_that_do_not_fit_name_the_key() -> None:
    import pytest

    from nnreg.utilities.errors import ConfigurationError

    config = ConfigurationPlan(
        data_identifier="t", spacing=[1.0] * 3, resampling_factor=[1.0] * 3, resampled_shape=[16, 16, 16],
        crop_start=[0, 0, 0], shape=[16, 16, 16], normalization={"scheme": "fixed_range", "lower": 0, "upper": 255},
        batch_size=1, architecture={})
    one = np.zeros((3, 16, 16, 16), np.float32)
    image = np.full((16, 16, 16), 100.0, np.float32)
    for weights, words in (([{}], 'Missing key(s) in state_dict: "field"'),
                           ([{"field": torch.zeros(1, 3, 8, 8, 8)}], "size mismatch for field")):
        predictor = nnRegPredictor(num_threads=1).manual_initialization(OracleNet(one), config, weights)
        with pytest.raises(ConfigurationError, match="fold") as info:
            predictor.predict_pair(image, image)
        assert words in str(info.value) and "\n" not in str(info.value)
