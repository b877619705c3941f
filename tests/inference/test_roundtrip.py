"""A known field on the original grid -> network grid (as preprocessing maps it) -> predictor -> export -> read back
as the official evaluator does: the same field (inside the network box), for a crop/pad and a half-resolution grid."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnreg.dataset.image_io import Geometry, read_displacement, read_image
from nnreg.inference import ExportOptions, nnRegPredictor, pair_outputs
from nnreg.inference.export import ExportJob, export_pair
from nnreg.planning.plans import ConfigurationPlan
from nnreg.preprocessing.preprocessor import grid_mapping_for
from tests.inference.helpers import OracleNet, smooth_field

SHAPE = (30, 36, 28)
GEOMETRY = Geometry(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _config(factor: float, crop_start: list[int], shape: list[int]) -> ConfigurationPlan:
    return ConfigurationPlan(
        data_identifier="test", spacing=[factor] * 3, resampling_factor=[factor] * 3,
        resampled_shape=[round(n / factor) for n in SHAPE], crop_start=crop_start, shape=shape,
        normalization={"scheme": "fixed_range", "lower": 0.0, "upper": 255.0}, batch_size=1,
        architecture={"network_class": "tests.inference.helpers.OracleNet", "kwargs": {}})


CONFIGS = {
    # full resolution: crop 2 voxels on axis 0, pad 3 on each side of axis 1, crop 2 on axis 2 (end)
    "fullres_crop_pad": _config(1.0, [2, -3, 0], [24, 42, 26]),
    # half resolution: resampling by 2 plus a 1-voxel crop on axis 1
    "halfres": _config(2.0, [0, 1, 0], [15, 16, 14]),
}


def _field_on_network_grid(field: np.ndarray, config: ConfigurationPlan) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Sample the original-grid field at the network voxels (vectors / factor), and the original-grid region the
    network box covers (where the round trip must be exact up to interpolation)."""
    mapping = grid_mapping_for(GEOMETRY, config)
    axes = [mapping.network_to_original_coords(a, np.arange(n, dtype=np.float64)) for a, n in enumerate(config.shape)]
    coords = np.meshgrid(*axes, indexing="ij")
    comps = [ndimage.map_coordinates(field[..., a], coords, order=3, mode="nearest") / mapping.factor[a]
             for a in range(3)]
    region = []
    for a in range(3):
        lo = max(0, int(np.ceil(axes[a][0])) + 1)
        hi = min(SHAPE[a], int(np.floor(axes[a][-1])))
        region.append(slice(lo, hi))
    return np.stack(comps).astype(np.float32), tuple(region)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_known_field_survives_preprocessing_and_export(name: str, tmp_path: Path) -> None:
    config = CONFIGS[name]
    truth = smooth_field(SHAPE, amplitude=2.5, seed=3)
    network_field, region = _field_on_network_grid(truth, config)
    predictor = nnRegPredictor(num_threads=1).manual_initialization(OracleNet(network_field), config)
    rng = np.random.default_rng(0)
    fixed = rng.uniform(0, 255, SHAPE).astype(np.float32)
    moving = rng.uniform(0, 255, SHAPE).astype(np.float32)
    field = predictor.predict_pair(fixed, moving, GEOMETRY, GEOMETRY)
    assert field.shape == (*SHAPE, 3) and field.dtype == np.float32

    outputs = pair_outputs(tmp_path, "TINY_0001_0000.nii.gz", "TINY_0002_0000.nii.gz")
    export_pair(ExportJob(outputs, ExportOptions(), field, GEOMETRY))
    read_back = read_displacement(outputs.displacement)  # nibabel, as the official evaluator
    assert read_back.shape == (*SHAPE, 3)
    error = np.abs(read_back[region] - truth[region]).max()
    tolerance = 1e-4 if config.resampling_factor[0] == 1.0 else 0.05
    assert error < tolerance, f"{name}: max error {error:.4f} voxels inside the network box"
    # outside the box the field continues with its edge values (no tear to zero at the box edge)
    assert np.isfinite(read_back).all()


def test_pull_convention_worked_example(tmp_path: Path) -> None:
    """fixed(x) = moving(x + 2 e0): the field u = (2, 0, 0) warps moving onto fixed (the example in prediction.md)."""
    config = CONFIGS["fullres_crop_pad"]
    moving = np.zeros(SHAPE, np.float32)
    moving[12:18, 10:20, 8:16] = 200.0
    fixed = np.zeros(SHAPE, np.float32)
    fixed[10:16, 10:20, 8:16] = 200.0          # the same block 2 voxels lower along axis 0
    network_field = np.zeros((3, *config.shape), np.float32)
    network_field[0] = 2.0
    predictor = nnRegPredictor(num_threads=1).manual_initialization(OracleNet(network_field), config)
    field = predictor.predict_pair(fixed, moving, GEOMETRY, GEOMETRY)
    outputs = pair_outputs(tmp_path, "TINY_0001_0000.nii.gz", "TINY_0002_0000.nii.gz")
    export_pair(ExportJob(outputs, ExportOptions(save_warped=True), field, GEOMETRY, moving_on_fixed=moving))
    warped, warped_geometry = read_image(outputs.warped)
    assert warped_geometry == GEOMETRY
    np.testing.assert_allclose(warped[:-2], fixed[:-2], atol=1e-3)


def test_moving_on_another_grid_is_resampled(caplog: pytest.LogCaptureFixture) -> None:
    """A moving image at 2 mm on a fixed 1 mm grid: resampled onto the fixed grid (logged), field on the fixed grid."""
    import logging

    config = dataclasses.replace(CONFIGS["fullres_crop_pad"])
    predictor = nnRegPredictor(num_threads=1).manual_initialization(
        OracleNet(np.zeros((3, *config.shape), np.float32)), config)
    coarse = Geometry((15, 18, 14), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), GEOMETRY.direction)
    fixed = np.ones(SHAPE, np.float32) * 100
    moving = np.ones(coarse.shape, np.float32) * 100
    logger = logging.getLogger("nnreg")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="nnreg"):
            prepared = predictor.prepare(fixed, moving, GEOMETRY, coarse)
    finally:
        logger.removeHandler(caplog.handler)
    assert "resampled onto the fixed grid" in caplog.text
    assert prepared.moving_on_fixed.shape == SHAPE
    assert predictor.predict_prepared(prepared).shape == (*SHAPE, 3)
