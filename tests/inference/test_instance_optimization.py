"""Test-time instance optimisation on tiny volumes: it lowers the loss, keeps the pull convention (checked with
scipy.ndimage.map_coordinates, independent of nnreg.spatial), stays diffeomorphic, is deterministic, composes with
the network's field, and is wired into the predictor and the plans."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.evaluation.jacobian import ndv
from nnreg.inference import nnRegPredictor
from nnreg.inference.instance_optimization import refine_field
from nnreg.inference.refinement_settings import InstanceOptimization, parse_overrides
from nnreg.planning.planner import refinement_settings
from nnreg.planning.plans import DEFAULT_INSTANCE_OPTIMIZATION, ConfigurationPlan, Plans
from nnreg.spatial import jacobian_determinant
from nnreg.utilities.errors import ConfigurationError
from tests.inference.helpers import OracleNet

SHAPE = (20, 24, 18)
SETTINGS = InstanceOptimization(steps=80, lr=0.2, grid_factor=2, image_factor=1, ncc_window=5, lambda_reg=0.1,
                                patience=80)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _blobs(seed: int = 0) -> np.ndarray:
    """A smooth textured image in [0, 1]: random noise low-passed, inside a margin of zeros."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(SHAPE), 1.5)
    image = (image - image.min()) / (image.max() - image.min())
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return np.where(mask, image, 0.0).astype(np.float32)


def _pull_warp(image: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``image(x + disp(x))`` by scipy, ``disp`` (H, W, D, 3) in voxels: the evaluator's convention."""
    coords = np.mgrid[tuple(slice(0, s) for s in image.shape)].astype(np.float64) + disp.transpose(3, 0, 1, 2)
    return ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)


def _smooth_field(amplitude: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 3.0) for _ in range(3)], axis=-1)
    return (field / np.abs(field).max() * amplitude).astype(np.float32)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image))[None, None]


def _as_field(disp: torch.Tensor) -> np.ndarray:
    return disp[0].permute(1, 2, 3, 0).numpy().astype(np.float64)


def _refine(fixed: np.ndarray, moving: np.ndarray, start: np.ndarray | None = None,
            settings: InstanceOptimization = SETTINGS, deterministic: bool = False):
    start_t = torch.zeros((1, 3, *SHAPE)) if start is None else torch.from_numpy(start).permute(3, 0, 1, 2)[None]
    return refine_field(_tensor(fixed), _tensor(moving), start_t.float(), settings, deterministic)


def test_translation_is_recovered_with_the_pull_sign() -> None:
    moving = _blobs()
    shift = np.array([1.5, -1.0, 0.75])
    fixed = _pull_warp(moving, np.broadcast_to(shift, (*SHAPE, 3))).astype(np.float32)  # fixed(x) = moving(x + t)
    refined, report = _refine(fixed, moving)
    field = _as_field(refined)
    inner = (slice(5, -5),) * 3
    np.testing.assert_allclose(np.median(field[inner].reshape(-1, 3), axis=0), shift, atol=0.3)
    assert report.final_loss < report.initial_loss
    # the refined field warps the moving image (by scipy) onto the fixed image better than no field does
    error = np.abs(_pull_warp(moving, field) - fixed)[inner].mean()
    assert error < 0.4 * np.abs(moving - fixed)[inner].mean()


def test_smooth_deformation_lowers_the_loss_and_stays_diffeomorphic() -> None:
    moving = _blobs(2)
    truth = _smooth_field(2.5)
    fixed = _pull_warp(moving, truth).astype(np.float32)
    refined, report = _refine(fixed, moving)
    field = _as_field(refined)
    assert report.steps_run > 1 and report.final_loss < report.initial_loss - 0.05
    assert report.final_ncc < report.initial_ncc
    inner = (slice(4, -4),) * 3
    assert np.abs(field - truth)[inner].mean() < 0.6 * np.abs(truth)[inner].mean()
    assert ndv(field) == 0.0


def test_large_deformation_has_no_folding() -> None:
    moving = _blobs(3)
    fixed = _pull_warp(moving, _smooth_field(4.0, seed=4)).astype(np.float32)
    strong = InstanceOptimization(steps=80, lr=0.3, grid_factor=2, image_factor=1, ncc_window=3, lambda_reg=0.05,
                                  patience=80)
    refined, report = _refine(fixed, moving, settings=strong)
    assert report.final_loss < report.initial_loss
    assert float(jacobian_determinant(refined).min()) > 0
    assert ndv(_as_field(refined)) == 0.0


def test_a_finer_fine_stage_grid_keeps_the_field_smooth_and_lowers_the_loss() -> None:
    moving = _blobs(8)
    truth = _smooth_field(2.5, seed=9)
    fixed = _pull_warp(moving, truth).astype(np.float32)
    settings = InstanceOptimization(steps=40, lr=0.2, grid_factor=2, image_factor=2, ncc_window=3, fine_steps=30,
                                    fine_ncc_window=5, fine_grid_factor=1, lambda_reg=0.1, patience=80)
    refined, report = _refine(fixed, moving, settings=settings)
    assert tuple(report.velocity.shape[2:]) == SHAPE            # the fine stage's velocity lives on the network grid
    assert report.final_loss < report.initial_loss - 0.05
    field = _as_field(refined)
    inner = (slice(4, -4),) * 3
    assert np.abs(field - truth)[inner].mean() < 0.6 * np.abs(truth)[inner].mean()
    assert float(jacobian_determinant(refined).min()) > 0 and ndv(field) == 0.0


def test_the_fine_stage_grid_follows_the_spacing() -> None:
    """About 2 mm control spacing: grid / 1 at 2 mm, grid / 2 at 1 mm, never coarser than the coarse stage."""
    assert refinement_settings([2.0, 2.0, 2.0])["fine_grid_factor"] == 1
    assert refinement_settings([1.0, 1.0, 1.2])["fine_grid_factor"] == 2
    assert refinement_settings([0.5, 0.5, 0.5])["fine_grid_factor"] == DEFAULT_INSTANCE_OPTIMIZATION["grid_factor"]
    assert refinement_settings([3.0, 3.0, 3.0])["fine_grid_factor"] == 1
    InstanceOptimization.from_json(refinement_settings([2.0, 2.0, 2.0]))   # valid settings


def test_a_configuration_that_a_finer_stage_follows_records_the_finer_stage_refinement() -> None:
    """``3d_halfres`` of 1 mm data (factor 2: a finer-grid stage follows) records more steps and a wider fine window;
    a 2 mm grid at the images' own spacing (factor 1, or 1.2 < 1.5: no finer stage) records the wider window with
    the edge-aware regulariser instead; 1 mm and 4 mm grids the defaults alone. The planner's threshold is the one
    the predictor subdivides by."""
    from nnreg.planning.plans import (FINER_STAGE_INSTANCE_OPTIMIZATION, NATIVE_2MM_INSTANCE_OPTIMIZATION,
                                      subdivisions)

    halfres = refinement_settings([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])
    assert halfres.items() >= FINER_STAGE_INSTANCE_OPTIMIZATION.items() and halfres["fine_grid_factor"] == 1
    assert halfres["steps"] > DEFAULT_INSTANCE_OPTIMIZATION["steps"]
    assert halfres["fine_ncc_window"] > InstanceOptimization().fine_ncc_window and "edge_kappa" not in halfres
    InstanceOptimization.from_json(halfres)                                  # valid settings
    for factor in ([1.0, 1.0, 1.0], [1.2, 1.2, 1.2], None):
        native = refinement_settings([2.0, 2.0, 2.0], factor)
        assert native == refinement_settings([2.0, 2.0, 2.0])
        assert native.items() >= NATIVE_2MM_INSTANCE_OPTIMIZATION.items()
        assert native["steps"] == DEFAULT_INSTANCE_OPTIMIZATION["steps"] and native["edge_kappa"] > 0
        assert InstanceOptimization.from_json(native).edge_kappa == NATIVE_2MM_INSTANCE_OPTIMIZATION["edge_kappa"]
        assert factor is None or subdivisions(factor) == (1, 1, 1)
    # the planner's rule is the predictor's: finer-stage additions exactly where some axis is subdivided
    for factor in ([1.0, 1.0, 2.0], [1.5, 1.5, 1.5], [1.49, 1.49, 1.49], [2.0, 1.0, 1.0]):
        settings = refinement_settings([2.0, 2.0, 2.0], factor)
        assert (settings["steps"] == FINER_STAGE_INSTANCE_OPTIMIZATION["steps"]) == (max(subdivisions(factor)) > 1)
        assert ("edge_kappa" in settings) == (max(subdivisions(factor)) == 1)
    # not measured: a 4 mm grid over 2 mm images (3d_halfres of 2 mm data), a 1 mm grid of 1 mm data: defaults
    for spacing, factor in (([4.0, 4.0, 4.0], [2.0, 2.0, 2.0]), ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])):
        assert not {"fine_ncc_window", "edge_kappa"} & set(refinement_settings(spacing, factor))


def _compose_by_scipy(u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``u o c``, i.e. ``c(x) + u(x + c(x))`` (warp by ``u`` first, then by ``c``), by map_coordinates."""
    coords = np.mgrid[tuple(slice(0, s) for s in SHAPE)].astype(np.float64) + c.transpose(3, 0, 1, 2)
    moved = np.stack([ndimage.map_coordinates(u[..., k], coords, order=1, mode="nearest") for k in range(3)], -1)
    return c + moved


def test_composition_mode_refines_a_spatially_varying_network_field() -> None:
    """``velocity_start="zero"``: the result is ``u_net o exp(v)`` (not ``exp(v) o u_net``), checked against an
    independent composition by scipy, and it registers better than the network's field."""
    from nnreg.inference.instance_optimization import exponential_field

    moving = _blobs(5)
    u_net = _smooth_field(2.0, seed=11)
    correction = _smooth_field(1.5, seed=12)
    fixed = _pull_warp(moving, _compose_by_scipy(u_net, correction)).astype(np.float32)
    with torch.inference_mode():   # the predictor's network field is an inference tensor
        start_t = torch.from_numpy(u_net).permute(3, 0, 1, 2)[None].float()
    settings = replace(SETTINGS, velocity_start="zero")
    refined, report = refine_field(_tensor(fixed), _tensor(moving), start_t, settings)
    assert not report.kept_network and report.velocity is not None
    c = _as_field(exponential_field(report.velocity, SHAPE, settings.integration_steps))
    assert np.abs(c).max() > 0.5                                        # a real, spatially varying correction
    inner = (slice(3, -3),) * 3
    expected = _compose_by_scipy(u_net.astype(np.float64), c)
    swapped = _compose_by_scipy(c, u_net.astype(np.float64))             # the other order differs by far more
    error = np.abs(_as_field(refined) - expected)[inner].max()
    assert error < 0.02 and np.abs(swapped - expected)[inner].max() > 10 * error
    inner = (slice(4, -4),) * 3
    refined_error = np.abs(_pull_warp(moving, _as_field(refined)) - fixed)[inner].mean()
    assert refined_error < 0.7 * np.abs(_pull_warp(moving, u_net) - fixed)[inner].mean()


def test_zero_steps_return_the_network_field_unchanged() -> None:
    moving = _blobs(5)
    start = _smooth_field(1.0, seed=13)
    unchanged, report = _refine(moving, moving, start, InstanceOptimization(steps=0))
    assert report.steps_run == 0 and np.array_equal(_as_field(unchanged), start.astype(np.float64))


def test_deterministic_runs_are_bitwise_equal() -> None:
    moving = _blobs(6)
    fixed = _pull_warp(moving, _smooth_field(2.0, seed=7)).astype(np.float32)
    settings = InstanceOptimization(steps=15, image_factor=2, grid_factor=2, ncc_window=3, patience=15)
    a, _ = _refine(fixed, moving, settings=settings, deterministic=True)
    b, _ = _refine(fixed, moving, settings=settings, deterministic=True)
    assert torch.equal(a, b)
    assert not torch.are_deterministic_algorithms_enabled()   # restored afterwards


def test_settings_are_validated_and_round_trip() -> None:
    settings = InstanceOptimization(steps=7, lr=0.2)
    assert InstanceOptimization.from_json(settings.to_json()) == settings
    assert InstanceOptimization.from_json(None) == InstanceOptimization()
    assert not InstanceOptimization().enabled
    with pytest.raises(ConfigurationError, match="unknown instance_optimization key"):
        InstanceOptimization.from_json({"steps": 3, "stepz": 4})
    with pytest.raises(ConfigurationError, match="odd"):
        InstanceOptimization(ncc_window=4)
    with pytest.raises(ConfigurationError, match="velocity_start"):
        InstanceOptimization(velocity_start="identity")
    assert parse_overrides("velocity_start=zero") == {"velocity_start": "zero"}
    # types are checked where the settings are made, not later inside range() or Adam
    with pytest.raises(ConfigurationError, match="steps must be an integer"):
        InstanceOptimization.from_json({"steps": 60.0})
    with pytest.raises(ConfigurationError, match="lr must be a number"):
        InstanceOptimization.from_json({"lr": "fast"})
    with pytest.raises(ConfigurationError, match="integer"):
        InstanceOptimization.from_json({"patience": True})
    assert InstanceOptimization.from_json({"lr": 1}).lr == 1.0 and isinstance(InstanceOptimization(lr=1).lr, float)


def _config(instance_optimization: dict | None) -> ConfigurationPlan:
    return ConfigurationPlan(
        data_identifier="t", spacing=[1.0] * 3, resampling_factor=[1.0] * 3, resampled_shape=list(SHAPE),
        crop_start=[0, 0, 0], shape=list(SHAPE), normalization={"scheme": "fixed_range", "lower": 0, "upper": 1},
        batch_size=1, architecture={}, instance_optimization=instance_optimization)


def test_predictor_uses_the_plans_setting_and_the_request_overrides_it() -> None:
    moving = _blobs(8)
    shift = np.array([1.0, 1.0, 0.0])
    fixed = _pull_warp(moving, np.broadcast_to(shift, (*SHAPE, 3))).astype(np.float32)
    oracle = np.zeros((3, *SHAPE), np.float32)
    recorded = {"steps": 60, "lr": 0.2, "grid_factor": 2, "image_factor": 1, "ncc_window": 5, "lambda_reg": 0.1}

    def predict(config: ConfigurationPlan, request: int | None) -> tuple[nnRegPredictor, np.ndarray]:
        predictor = nnRegPredictor(num_threads=1, instance_optimization=request)
        predictor.manual_initialization(OracleNet(oracle), config)
        return predictor, predictor.predict_pair(fixed, moving)

    predictor, refined = predict(_config(recorded), None)
    assert predictor.instance_optimization.steps == 60 and predictor.last_refinement is not None
    inner = (slice(5, -5),) * 3
    np.testing.assert_allclose(np.median(refined[inner].reshape(-1, 3), axis=0), shift, atol=0.35)
    _, off = predict(_config(recorded), 0)
    assert np.array_equal(off, np.zeros_like(off))
    _, unrecorded = predict(_config(None), None)           # old plans: no refinement
    assert np.array_equal(unrecorded, np.zeros_like(unrecorded))
    predictor, _ = predict(_config(None), 5)               # the flag alone: the default settings
    assert predictor.instance_optimization == InstanceOptimization(steps=5)


@pytest.mark.parametrize("velocity_start", ["zero", "network"])
def test_the_inverse_estimate_follows_the_refinement(velocity_start: str, monkeypatch) -> None:
    """With ``--inverse`` the predictor's velocity inverse must invert the refined field, not the network's; a
    refinement from the network's field does not need the network's own inverse estimate, so it is not computed."""
    import nnreg.inference.inverse as inverse_module
    from nnreg.networks import build_network, default_architecture
    from nnreg.spatial import compose

    calls = []
    original = inverse_module.velocity_inverse
    monkeypatch.setattr(inverse_module, "velocity_inverse", lambda *a: calls.append(1) or original(*a))

    torch.manual_seed(0)
    network = build_network(default_architecture(2, base_channels=4))
    moving = _blobs(9)
    fixed = _pull_warp(moving, _smooth_field(2.0, seed=10)).astype(np.float32)
    predictor = nnRegPredictor(num_threads=1, instance_optimization=InstanceOptimization(
        steps=40, lr=0.3, grid_factor=2, image_factor=1, ncc_window=5, lambda_reg=0.1, patience=40,
        velocity_start=velocity_start))
    predictor.manual_initialization(network, _config(None))
    predictor.keep_velocity_inverse = True
    refined = predictor.predict_network_grid(fixed, moving)
    inverse = predictor.last_velocity_inverse
    assert inverse is not None and float(refined.abs().mean()) > 0.3
    assert len(calls) == (0 if velocity_start == "network" else 1)
    residual = compose(refined, inverse)                   # phi_refined o phi_inverse - id
    inner = (slice(4, -4),) * 3
    assert float(residual[(0, slice(None), *inner)].abs().mean()) < 0.1 * float(refined.abs().mean())


def test_plans_record_the_default_and_read_old_files() -> None:
    plans = Plans("D", "nnRegPlans", [1.0] * 3, list(SHAPE), {"3d_fullres": _config(dict(DEFAULT_INSTANCE_OPTIMIZATION))})
    data = plans.to_json()
    assert Plans.from_json(data).configurations["3d_fullres"].instance_optimization == DEFAULT_INSTANCE_OPTIMIZATION
    del data["configurations"]["3d_fullres"]["instance_optimization"]
    assert Plans.from_json(data).configurations["3d_fullres"].instance_optimization is None
    assert InstanceOptimization.from_json(DEFAULT_INSTANCE_OPTIMIZATION).enabled


def test_cli_flag_and_the_recorded_default(tmp_path) -> None:
    import nibabel as nib
    from click.testing import CliRunner

    from nnreg.cli.predict import main
    from nnreg.networks import default_architecture
    from tests.inference.helpers import planned_dataset, write_model_folder

    root, plans = planned_dataset(tmp_path, n_train=5, n_val=2)
    recorded = plans.configurations["3d_fullres"].instance_optimization
    assert recorded == refinement_settings(plans.configurations["3d_fullres"].spacing)
    assert recorded.items() >= DEFAULT_INSTANCE_OPTIMIZATION.items()
    model = write_model_folder(tmp_path / "results", plans, "3d_fullres", architecture=default_architecture(2, base_channels=8))
    predictor = nnRegPredictor(num_threads=1).initialize_from_trained_model_folder(model)
    assert predictor.instance_optimization == InstanceOptimization.from_json(recorded)
    images = sorted((root / "imagesVal").glob("*.nii.gz"))

    def predict(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / name
        result = CliRunner().invoke(main, ["--fixed", str(images[0]), "--moving", str(images[1]), "-o", str(out),
                                           "-m", str(model), "--threads", "1", *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (path,) = out.glob("disp_*.nii.gz")
        return np.asarray(nib.load(str(path)).get_fdata())

    network_only = predict("off", "--instance-optimization", "0")
    refined = predict("a", "--instance-optimization", "8", "--deterministic")
    again = predict("b", "--instance-optimization", "8", "--deterministic")
    assert np.array_equal(refined, again) and not np.array_equal(refined, network_only)
    assert ndv(refined) < 0.01
    coarse = predict("c", "--instance-optimization", "8", "--deterministic",
                     "--instance-optimization-settings", "grid_factor=4, fine_steps=0")
    assert not np.array_equal(coarse, refined) and ndv(coarse) < 0.01
    bad = CliRunner().invoke(main, ["--fixed", str(images[0]), "--moving", str(images[1]), "-o", str(tmp_path / "x"),
                                    "-m", str(model), "--instance-optimization-settings", "grid=2"])
    assert bad.exit_code != 0 and "not KEY=VALUE" in bad.output and "Traceback" not in bad.output


def test_overrides_are_typed_like_the_settings_and_replace_single_keys() -> None:
    overrides = parse_overrides(" grid_factor=2, lambda_reg=0.5 ,")
    assert overrides == {"grid_factor": 2, "lambda_reg": 0.5} and isinstance(overrides["grid_factor"], int)
    assert parse_overrides("") == {}
    settings = InstanceOptimization(steps=60).with_overrides(overrides)
    assert (settings.steps, settings.grid_factor, settings.lambda_reg) == (60, 2, 0.5)
    for text, message in (("window=3", "not KEY=VALUE"), ("grid_factor=2.5", "not a valid int"),
                          ("ncc_window=4", "odd")):
        with pytest.raises(ConfigurationError, match=message):
            InstanceOptimization().with_overrides(parse_overrides(text))
    recorded = {"steps": 60, "grid_factor": 4}
    predictor = nnRegPredictor(num_threads=1, instance_optimization=7,
                               instance_optimization_overrides={"grid_factor": 2})
    predictor.manual_initialization(OracleNet(np.zeros((3, *SHAPE), np.float32)), _config(recorded))
    assert predictor.instance_optimization == InstanceOptimization(steps=7, grid_factor=2)

