"""``nnreg_register -m MODEL_FOLDER``: a trained model's network starts the deformable stage; the outputs are the
same files as without a model, and the written ITK transforms reproduce the warped image (SimpleITK)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnreg.cli.register import main
from nnreg.dataset.image_io import read_displacement
from tests.inference.helpers import invoke_cli, planned_dataset, small_model
from tests.registration.conftest import brain as _brain
from tests.registration.conftest import itk_reproduction_error, read, write_pair



@pytest.fixture(scope="module")
def with_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The phantom pair (moving on a permuted, anisotropic grid) registered with a tiny fixed_range model."""
    base = tmp_path_factory.mktemp("register_model")
    _, plans, model = small_model(base)
    fixed, moving, labels = write_pair(base / "inputs", reorient=True)
    out = base / "out"
    result = invoke_cli(main, "--fixed", fixed, "--moving", moving, "-o", out, "--moving-labels", labels,
                        "--inverse", "-m", model, "-f", "0")
    assert result.exit_code == 0, result.output + result.stderr
    return {"fixed": fixed, "moving": moving, "out": out}


def test_model_path_writes_the_same_outputs(with_model) -> None:
    names = {p.name for p in with_model["out"].iterdir()}
    assert {"warped.nii.gz", "field.nii.gz", "transform0GenericAffine.mat", "transform1Warp.nii.gz",
            "transform1InverseWarp.nii.gz", "inverse_field.nii.gz", "inverse_warped.nii.gz", "warped_labels.nii.gz",
            "qc.png", "register.log", "register.json"} <= names
    log = (with_model["out"] / "register.log").read_text()
    assert "network grid:" in log and "network: 3d_fullres" in log and "affine:" in log, log
    fixed, _ = read(with_model["fixed"])
    assert read_displacement(with_model["out"] / "field.nii.gz").shape == fixed.shape + (3,)


def test_model_field_convention_matches_scipy(with_model) -> None:
    """warped(x) = moving(x + u(x)) with the model path's Learn2Reg field, as scipy computes it."""
    fixed, _ = read(with_model["fixed"])
    moving, _ = read(with_model["moving"])
    warped, _ = read(with_model["out"] / "warped.nii.gz")
    field = read_displacement(with_model["out"] / "field.nii.gz")
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij")) + field.transpose(3, 0, 1, 2)
    reference = ndimage.map_coordinates(moving.astype(np.float64), coords, order=1, mode="constant")
    assert np.abs(warped - reference)[_brain(fixed)].max() <= 1e-3 * np.ptp(moving)


def test_model_itk_transforms_reproduce_the_warped_image(with_model) -> None:
    """SimpleITK applying [affine, displacement] (last added first) gives the model path's warped image."""
    error, moving_range = itk_reproduction_error(with_model)
    assert error <= 1e-3 * moving_range


def test_model_path_refines_from_the_network_and_aligns(with_model) -> None:
    """The deformable stage runs from the network's field and from the identity, says which it kept, and the pair
    ends aligned."""
    log = (with_model["out"] / "register.log").read_text()
    assert "deformable from the network:" in log and "deformable from the identity:" in log, log
    assert re.search(r"deformable: kept the refinement from the (network's field|identity) \(lower loss\)", log), log
    fixed, _ = read(with_model["fixed"])
    warped, _ = read(with_model["out"] / "warped.nii.gz")
    brain = _brain(fixed)
    assert np.corrcoef(warped[brain], fixed[brain])[0, 1] > 0.8


def test_network_field_maps_back_as_nnreg_predict_does(tmp_path: Path) -> None:
    """A known network-grid field (oracle network, no refinement) with a pure shift as the affine: the Learn2Reg
    field on the fixed grid is ``nnreg_predict``'s original-grid field plus the shift, so the network grid's
    physical placement (:func:`network_geometry`) and the composition with the affine are right."""
    from nnreg.alignment.affine import AffineResult
    from nnreg.dataset.image_io import Geometry
    from nnreg.inference import nnRegPredictor
    from nnreg.planning.plans import Plans
    from nnreg.registration.network import network_field
    from nnreg.registration.pipeline import Registration
    from nnreg.registration.transforms import forward_on_fixed_grid
    from tests.inference.helpers import OracleNet, smooth_field

    _, plans = planned_dataset(tmp_path, n_train=5, n_val=2)
    config = Plans.from_json(plans.to_json()).configuration("3d_halfres")
    oracle = smooth_field(tuple(config.shape), amplitude=1.5).transpose(3, 0, 1, 2)
    predictor = nnRegPredictor(instance_optimization=0).manual_initialization(OracleNet(oracle), config)
    rng = np.random.default_rng(0)
    fixed = rng.random((32, 40, 32)).astype(np.float32) * 200
    fixed_geometry = Geometry((32, 40, 32), (1.0, 1.0, 1.0), (3.0, -2.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    moving_geometry = Geometry((30, 36, 34), (1.2, 1.1, 0.9), (-1.0, 0.5, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    moving = rng.random(moving_geometry.shape).astype(np.float32) * 200
    shift = np.array([2.0, -1.5, 0.5])
    affine = AffineResult(np.eye(3), np.zeros(3), shift, 0.0)
    geometry, field, _ = network_field(predictor, fixed, fixed_geometry, moving, moving_geometry, affine,
                                       ("fixed", "moving"))
    registration = Registration(affine, geometry, field, torch.zeros(1), torch.zeros(1), 1.0)
    learn2reg, _ = forward_on_fixed_grid(registration, fixed_geometry, moving_geometry)
    expected = predictor.predict_pair(fixed, fixed, fixed_geometry, fixed_geometry)   # fixed voxels, fixed grid
    index = np.stack(np.meshgrid(*[np.arange(n) for n in fixed_geometry.shape], indexing="ij"), -1)
    physical = np.asarray(fixed_geometry.origin) + (index + expected) * np.asarray(fixed_geometry.spacing) + shift
    want = (physical - np.asarray(moving_geometry.origin)) / np.asarray(moving_geometry.spacing) - index
    assert np.abs(learn2reg - want).max() < 1e-3


def test_model_and_dataset_together_is_one_line(tmp_path: Path) -> None:
    fixed, moving, _ = write_pair(tmp_path / "in")
    result = invoke_cli(main, "--fixed", fixed, "--moving", moving, "-o", tmp_path / "out", "-m", tmp_path,
                        "-d", "901")
    assert result.exit_code == 2 and "either -m MODEL_FOLDER or -d DATASET" in result.stderr, result.stderr


def test_model_path_finishes_on_a_finer_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a finer-grid stage after the deformable stage started by the model (forced here: the phantom is no
    finer than the working grid), the registration ends on the working grid subdivided twice, and the written files
    keep the ITK convention."""
    from nnreg.registration.pipeline import RegistrationSettings

    monkeypatch.setattr(RegistrationSettings, "finer_grid_factor", lambda self, fixed, coarse: 2)
    _, _, model = small_model(tmp_path)
    fixed, moving, labels = write_pair(tmp_path / "inputs")
    out = tmp_path / "out"
    result = invoke_cli(main, "--fixed", fixed, "--moving", moving, "-o", out, "-m", model, "-f", "0")
    assert result.exit_code == 0, result.output + result.stderr
    log = (out / "register.log").read_text()
    working = re.search(r"working grids: fixed \[(\d+), (\d+), (\d+)\], moving \[[\d, ]+\] at ([\d.]+) mm", log)
    assert working is not None and "network grid:" in log and "deformable from the network:" in log, log
    shape = [2 * int(working.group(k)) for k in (1, 2, 3)]
    assert f"finer grid {shape} at {float(working.group(4)) / 2:g} mm:" in log, log
    run = {"fixed": fixed, "moving": moving, "out": out}
    error, moving_range = itk_reproduction_error(run)
    assert error <= 1e-3 * moving_range
    fixed_array, _ = read(fixed)
    warped, _ = read(out / "warped.nii.gz")
    assert np.corrcoef(warped[_brain(fixed_array)], fixed_array[_brain(fixed_array)])[0, 1] > 0.8


def test_network_field_moves_onto_another_grid_as_the_same_physical_displacement() -> None:
    """``on_grid``: a field linear in physical space (which trilinear interpolation reproduces) on a rotated,
    anisotropic grid, carried onto a coarser grid of other axes, is that grid's voxels of the same millimetres."""
    from nnreg.alignment.grids import index_to_physical, voxel_centres
    from nnreg.dataset.image_io import Geometry
    from nnreg.registration.network import on_grid

    c, s = np.cos(0.3), np.sin(0.3)
    source = Geometry((30, 34, 28), (1.0, 1.2, 0.9), (-14.0, -19.0, -12.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    target = Geometry((12, 14, 11), (2.0, 2.0, 2.0), (-8.0, -10.0, 10.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    gradient = np.array([[0.05, -0.02, 0.01], [0.03, 0.04, -0.02], [-0.01, 0.02, 0.06]])
    offset = np.array([1.5, -0.5, 2.0])
    mm = lambda points: points @ gradient.T + offset                                    # noqa: E731
    to_voxels = np.linalg.inv(index_to_physical(source)[:3, :3])
    field = np.einsum("rc,...c->r...", to_voxels, mm(voxel_centres(source)))[None]
    got = on_grid(torch.from_numpy(field), source, target)[0].numpy()
    want = np.einsum("rc,...c->r...", np.linalg.inv(index_to_physical(target)[:3, :3]), mm(voxel_centres(target)))
    index = voxel_centres(target) @ np.linalg.inv(index_to_physical(source)).T[:3, :3] + \
        np.linalg.inv(index_to_physical(source))[:3, 3]
    inside = np.all((index >= 0) & (index <= np.array(source.shape) - 1), axis=-1)   # outside: edge values
    assert got.shape == (3, *target.shape) and inside.mean() > 0.5
    assert np.abs(got - want)[:, inside].max() < 1e-4


def test_the_start_whose_refinement_reaches_the_lower_loss_is_kept() -> None:
    """A network start at the true shift is kept over the identity; a network start the wrong way is not."""
    from nnreg.registration.pipeline import DEFORMABLE, _deformable

    g = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 36, 36, 36, generator=g), 5, 1, 2)
    fixed = blobs[..., 4:-4, 4:-4, 4:-4].contiguous()
    moving = blobs[..., 7:-1, 4:-4, 4:-4].contiguous()             # fixed(x) = moving(x - 3 voxels along axis 0)
    truth = torch.zeros(1, 3, *fixed.shape[2:])
    truth[:, 0] = -3.0
    settings = DEFORMABLE.with_overrides({"steps": 4, "fine_steps": 4})
    for start, expected in ((truth, "network"), (-truth, "identity")):
        log: list[str] = []
        chosen, _, report, similarity = _deformable(fixed, moving, {"identity": torch.zeros_like(truth),
                                                                    "network": start}, settings, log)
        assert chosen == expected, log
        assert f"kept the refinement from the {'network' + chr(39) + 's field' if expected == 'network' else expected}" \
            in log[-1]
        assert set(similarity) == {"ncc_after_affine", "ncc_final", "ncc_network"}


def _fake_refinements(monkeypatch: pytest.MonkeyPatch, outcomes: dict[float, tuple[float, float, bool]]) -> None:
    """refine_field replaced: the start's first value picks (final loss, folding %, refused) and the returned field
    is the start plus 1 (so a test sees which start's field came back)."""
    import nnreg.registration.pipeline as pipeline
    from nnreg.inference.instance_optimization import RefinementReport

    def fake(fixed, moving, start, settings, masks=None):
        loss, folding, refused = outcomes[float(start.flatten()[0])]
        velocity = None if refused else start + 1
        return start + 1, RefinementReport(3, 0.0, loss, 0.0, -0.5, velocity, refused, "refused" if refused else "",
                                           folding)

    monkeypatch.setattr(pipeline, "refine_field", fake)


def test_a_folding_refinement_loses_to_a_clean_one_whatever_its_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnreg.registration.pipeline import DEFORMABLE, _deformable

    starts = {"identity": torch.zeros(1, 3, 4, 4, 4), "network": torch.full((1, 3, 4, 4, 4), 2.0)}
    _fake_refinements(monkeypatch, {0.0: (-0.3, 0.0, False), 2.0: (-0.5, 0.5, False)})
    chosen, field, report, _ = _deformable(torch.zeros(1), torch.zeros(1), starts, DEFORMABLE, [])
    assert chosen == "identity" and float(field.max()) == 1.0 and report.final_loss == -0.3
    _fake_refinements(monkeypatch, {0.0: (-0.3, 0.0, False), 2.0: (-0.5, 0.0, False)})
    chosen, field, report, _ = _deformable(torch.zeros(1), torch.zeros(1), starts, DEFORMABLE, [])
    assert chosen == "network" and float(field.min()) == 3.0 and report.final_loss == -0.5


def test_the_finer_grid_stage_goes_on_only_from_a_velocity() -> None:
    """The kept refinement's velocity; the identity's zeros when its refinement was refused; nothing (stage
    skipped) when a refused network start was kept: its field is not exp of any velocity given."""
    from nnreg.inference.instance_optimization import RefinementReport
    from nnreg.registration.pipeline import finer_grid_start

    starts = {"identity": torch.zeros(1, 3, 4, 4, 4), "network": torch.ones(1, 3, 4, 4, 4)}
    velocity = torch.full((1, 3, 4, 4, 4), 0.5)
    assert finer_grid_start("network", RefinementReport(1, 0, 0, 0, 0, velocity), starts) is velocity
    assert finer_grid_start("identity", RefinementReport(1, 0, 0, 0, 0, None, True), starts) is starts["identity"]
    assert finer_grid_start("network", RefinementReport(1, 0, 0, 0, 0, None, True), starts) is None


def test_a_network_start_needs_the_whole_transform_parametrisation() -> None:
    from nnreg.registration.pipeline import DEFORMABLE, _deformable
    from nnreg.utilities.errors import ConfigurationError

    starts = {"identity": torch.zeros(1, 3, 4, 4, 4), "network": torch.ones(1, 3, 4, 4, 4)}
    with pytest.raises(ConfigurationError, match="velocity_start"):
        _deformable(torch.zeros(1), torch.zeros(1), starts, DEFORMABLE.with_overrides({"velocity_start": "zero"}), [])
