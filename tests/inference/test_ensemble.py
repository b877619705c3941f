"""Fold ensembling keeps NDV at the single-fold level; the guard catches the averages that fold."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from nnreg.evaluation import ndv
from nnreg.inference import nnRegPredictor
from nnreg.inference.ensemble import ensemble_displacements, folded_voxels
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
    field, report = ensemble_displacements(folds)
    assert report.used == "mean"
    assert _ndv(field) <= max(single)
    assert _ndv(field) <= float(np.mean(single))


def _linear_field(matrix: np.ndarray) -> torch.Tensor:
    """u(x) = (A - I)(x - c): the linear map A about the grid centre, as a voxel-unit field (1, 3, *SHAPE)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij"))
    disp = np.einsum("rc,c...->r...", matrix - np.eye(3), grid)
    return torch.from_numpy(disp)[None].float()


def test_guard_replaces_a_folding_mean_by_the_medoid_fold() -> None:
    """det A1 = 1, det A2 = 1.2 > 0, but det((A1 + A2) / 2) < 0: the plain mean folds everywhere."""
    first = _linear_field(np.eye(3))
    second = _linear_field(np.diag([-3.0, -0.4, 1.0]))
    assert folded_voxels(first) == 0 and folded_voxels(second) == 0
    assert folded_voxels((first + second) / 2) > 0
    field, report = ensemble_displacements([first, second])
    assert report.used.startswith("medoid")
    assert folded_voxels(field) == 0


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
