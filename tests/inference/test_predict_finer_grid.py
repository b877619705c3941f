"""The predictor's finer-grid stage: after a refinement on a network grid coarser than the images (``3d_halfres`` of
1 mm data), a few steps with the similarity on the original grid. Checked: the finer grid's map to the original
grid against the network grid's own (an independent route through ``GridMapping.network_to_original_coords``), the
stage raising the original-grid NCC of a textured pair, ``steps=0`` and grids that are not coarser giving the old
field bitwise, the inverse estimate following the stage, and the CLI option."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.inference import nnRegPredictor
from nnreg.inference.finer_grid import FinerGridSettings, finer_mapping
from nnreg.inference.instance_optimization import InstanceOptimization, exponential_field
from nnreg.losses.ncc import local_ncc
from nnreg.planning.plans import ConfigurationPlan
from nnreg.preprocessing.grid import GridMapping
from tests.inference.helpers import OracleNet, textured_pair

ORIGINAL = (32, 36, 28)          # 1 mm images
NETWORK = (16, 18, 14)           # the 2 mm network grid over the same extent
REFINEMENT = InstanceOptimization(steps=30, lr=0.3, grid_factor=1, image_factor=1, ncc_window=5, lambda_reg=0.2,
                                  patience=30, integration_steps=3)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.mark.parametrize("factor", [(2.0, 2.0, 2.0), (2.4, 1.2, 3.0), (1.6, 1.0, 2.0)])
def test_the_finer_grid_sits_where_the_network_grid_does(factor) -> None:
    mapping = GridMapping((40, 30, 50), factor, (-1, 2, 0), (12, 10, 16))
    finer = finer_mapping(mapping)
    assert finer is not None
    ks = [int(round(f)) if f >= 1.5 else 1 for f in factor]
    assert finer.shape == tuple(n * k for n, k in zip(mapping.shape, ks))
    for axis, k in enumerate(ks):
        q = np.arange(finer.shape[axis], dtype=np.float64)
        network_coordinate = (q + 0.5) / k - 0.5      # finer voxel q in network voxels (shared extent)
        np.testing.assert_allclose(finer.network_to_original_coords(axis, q),
                                   mapping.network_to_original_coords(axis, network_coordinate), atol=1e-12)
    if factor == (2.0, 2.0, 2.0):
        assert finer.is_pure_crop and finer.crop_start == (-2, 4, 0)


def test_no_finer_grid_when_the_network_grid_is_not_coarser() -> None:
    assert finer_mapping(GridMapping((20, 20, 20), (1.0, 1.2, 1.4), (0, 0, 0), (20, 17, 14))) is None


def _config(**refinement) -> ConfigurationPlan:
    return ConfigurationPlan(
        data_identifier="t", spacing=[2.0] * 3, resampling_factor=[2.0] * 3, resampled_shape=list(NETWORK),
        crop_start=[0, 0, 0], shape=list(NETWORK), normalization={"scheme": "fixed_range", "lower": 0, "upper": 1},
        batch_size=1, architecture={}, instance_optimization=refinement or None)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """A textured 1 mm pair with detail a 2 mm grid blurs away, the fixed image a smooth warp of the moving one."""
    return textured_pair(ORIGINAL, 3, 0.9, 3, lambda g: np.stack([1.2 * np.sin(g[1] / 9.0), 0.8 * np.cos(g[0] / 8.0),
                                                                  0.6 * np.sin(g[2] / 7.0)]))


def _ncc_after(fixed: np.ndarray, moving: np.ndarray, field: np.ndarray) -> float:
    grid = np.mgrid[tuple(slice(0, n) for n in ORIGINAL)].astype(np.float64)
    warped = ndimage.map_coordinates(moving, grid + field.transpose(3, 0, 1, 2), order=1, mode="constant")
    as_tensor = [torch.from_numpy(a.astype(np.float32))[None, None] for a in (fixed, warped)]
    return float(local_ncc(*as_tensor, window=5).mean())


def _predictor(steps: int, parametrisation: str = "velocity", **kwargs) -> nnRegPredictor:
    extra = {"lambda_reg": None, "lr": 0.25} if parametrisation == "velocity" else {"lambda_reg": 0.5, "lr": 0.05}
    predictor = nnRegPredictor(num_threads=1, instance_optimization=REFINEMENT,
                               finer_grid=FinerGridSettings(steps=steps, ncc_window=5, parametrisation=parametrisation,
                                                            **extra), **kwargs)
    predictor.manual_initialization(OracleNet(np.zeros((3, *NETWORK), np.float32)), _config())
    return predictor


def _geometry(spacing: float):
    from nnreg.dataset.image_io import Geometry

    return Geometry(ORIGINAL, (spacing,) * 3, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


@pytest.mark.parametrize("parametrisation", ["velocity", "displacement"])
def test_the_stage_adds_the_original_grids_detail(parametrisation: str) -> None:
    fixed, moving = _pair()
    geometry = _geometry(1.0)
    coarse = _predictor(0)
    ended_coarse = coarse.predict_pair(fixed, moving, geometry, geometry)
    assert coarse.last_refinement is not None and coarse.last_finer_grid is None
    finer = _predictor(12, parametrisation)
    ended_finer = finer.predict_pair(fixed, moving, geometry, geometry)
    report = finer.last_finer_grid
    assert report is not None and not report.kept_network and report.steps_run > 0
    assert report.final_loss < report.initial_loss
    assert ended_finer.shape == (*ORIGINAL, 3)
    assert _ncc_after(fixed, moving, ended_finer) > _ncc_after(fixed, moving, ended_coarse) + 0.005
    # the same refinement underneath: the stage starts from the coarse result
    prepared = coarse.prepare(fixed, moving, geometry, geometry)
    field = coarse.predict_network_grid(prepared.fixed_network, prepared.moving_network)
    assert np.array_equal(prepared.mapping.field_to_original(field[0].numpy()), ended_coarse)


def test_no_stage_on_the_network_grids_own_spacing_or_from_a_network_composition() -> None:
    fixed, moving = _pair()
    predictor = _predictor(12)
    predictor.predict_pair(fixed, moving, _geometry(2.0), _geometry(2.0))  # images already on the 2 mm grid
    assert predictor.last_refinement is not None and predictor.last_finer_grid is None
    composed = nnRegPredictor(num_threads=1, finer_grid=FinerGridSettings(steps=12),
                              instance_optimization=InstanceOptimization(
                                  steps=10, grid_factor=1, image_factor=1, velocity_start="zero"))
    composed.manual_initialization(OracleNet(np.zeros((3, *NETWORK), np.float32)), _config())
    composed.predict_pair(fixed, moving, _geometry(1.0), _geometry(1.0))
    assert composed.last_refinement is not None and composed.last_finer_grid is None


def test_no_stage_after_a_mind_refinement() -> None:
    """A pair of two contrasts refined with MIND-SSC gets no finer-grid stage (its local NCC of the raw images
    assumes one contrast); the same predictor with local NCC does."""
    fixed, moving = _pair()
    for similarity, staged in (("mind", False), ("lncc", True)):
        predictor = _predictor(4)
        predictor.instance_optimization_request = REFINEMENT.with_overrides({"similarity": similarity, "steps": 4})
        predictor.predict_pair(fixed, moving, _geometry(1.0), _geometry(1.0))
        assert predictor.last_refinement is not None and (predictor.last_finer_grid is not None) == staged


def test_the_inverse_estimate_is_the_finer_stages() -> None:
    fixed, moving = _pair()
    predictor = _predictor(6)
    predictor.keep_velocity_inverse = True
    predictor.predict_pair(fixed, moving, _geometry(1.0), _geometry(1.0))
    report = predictor.last_finer_grid
    assert report is not None and report.velocity is not None and predictor.last_velocity_inverse is not None
    expected = exponential_field(-report.velocity, NETWORK, REFINEMENT.integration_steps)
    assert torch.allclose(predictor.last_velocity_inverse, expected)
    refined = predictor.last_refinement
    assert refined is not None and not torch.equal(report.velocity, refined.velocity)


def test_the_inverse_estimate_of_a_displacement_correction_is_the_refinements() -> None:
    """With ``parametrisation="displacement"`` the velocity is the refinement's (the correction has none): the
    inverse's start is its ``exp(-v)``, integrated with the refinement's steps."""
    fixed, moving = _pair()
    predictor = _predictor(6, "displacement")
    predictor.keep_velocity_inverse = True
    predictor.predict_pair(fixed, moving, _geometry(1.0), _geometry(1.0))
    report, refined = predictor.last_finer_grid, predictor.last_refinement
    assert report is not None and not report.kept_network and refined is not None
    assert torch.equal(report.velocity, refined.velocity)
    expected = exponential_field(-refined.velocity, NETWORK, REFINEMENT.integration_steps)
    assert torch.allclose(predictor.last_velocity_inverse, expected)


def test_cli_finer_steps(tmp_path) -> None:
    """``nnreg_predict --finer-steps``: images twice as fine as a model's network grid end on their own grid."""
    import nibabel as nib
    import SimpleITK as sitk
    from click.testing import CliRunner

    from nnreg.cli.predict import main
    from nnreg.networks import default_architecture
    from tests.inference.helpers import planned_dataset, write_model_folder

    root, plans = planned_dataset(tmp_path, n_train=5, n_val=2)
    model = write_model_folder(tmp_path / "results", plans, "3d_fullres",
                               architecture=default_architecture(2, base_channels=4))
    fine = []
    for path in sorted((root / "imagesVal").glob("*.nii.gz"))[:2]:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        size = [2 * n for n in image.GetSize()]
        spacing = [s / 2 for s in image.GetSpacing()]
        origin = image.TransformContinuousIndexToPhysicalPoint([-0.25] * 3)
        resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing,
                                  image.GetDirection())
        fine.append(tmp_path / f"fine_{len(fine)}.nii.gz")
        sitk.WriteImage(resampled, str(fine[-1]))

    def predict(name: str, *extra: str) -> tuple[np.ndarray, str]:
        out = tmp_path / name
        result = CliRunner().invoke(main, ["--fixed", str(fine[0]), "--moving", str(fine[1]), "-o", str(out),
                                           "-m", str(model), "--threads", "1", "--instance-optimization", "6",
                                           "--deterministic", *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (path,) = out.glob("disp_*.nii.gz")
        return np.asarray(nib.load(str(path)).get_fdata()), result.output

    ended_coarse, _ = predict("off", "--finer-steps", "0")
    ended_finer, _ = predict("on", "--finer-steps", "4")
    assert ended_finer.shape == ended_coarse.shape == (*sitk.ReadImage(str(fine[0])).GetSize(), 3)
    assert not np.array_equal(ended_finer, ended_coarse)
    as_velocity, _ = predict("velocity", "--finer-steps", "4", "--finer-grid-settings",
                             "parametrisation=velocity,lambda_reg=none,lr=0.25")
    assert not np.array_equal(as_velocity, ended_finer) and not np.array_equal(as_velocity, ended_coarse)
    for args in (["--finer-steps", "-1"], ["--finer-grid-settings", "parametrisation=spline"],
                 ["--finer-grid-settings", "step=3"]):
        bad = CliRunner().invoke(main, ["--fixed", str(fine[0]), "--moving", str(fine[1]), "-o",
                                        str(tmp_path / "x"), "-m", str(model), *args])
        assert bad.exit_code != 0 and "Traceback" not in bad.output, args
        assert ("finer-steps" if args[1] == "-1" else args[1].split("=")[0]) in bad.output, bad.output


def test_only_pairs_with_a_finer_grid_carry_their_normalised_images() -> None:
    """The original-grid normalised images travel from the reader workers only where the stage can use them."""
    fixed, moving = _pair()
    predictor = _predictor(6)
    finer = predictor.prepare(fixed, moving, _geometry(1.0), _geometry(1.0))
    assert finer.fixed_normalised is not None and finer.moving_normalised is not None
    assert finer.fixed_normalised.shape == ORIGINAL and float(finer.fixed_normalised.max()) <= 1.0
    same = predictor.prepare(fixed, moving, _geometry(2.0), _geometry(2.0))
    assert same.fixed_normalised is None and same.moving_normalised is None
