"""Symmetric, inverse-consistent training (plans key ``symmetric_training``): the penalty against an independent
reference, the one-call step against two separate calls, the plans switch and a run through nnreg_train."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import ndimage

from nnreg.cli.train import main
from nnreg.losses import DeepSupervisedRegistrationLoss, inverse_consistency_loss, inverse_consistency_residuals
from nnreg.networks import build_network, default_architecture
from nnreg.spatial import integrate_velocity
from nnreg.training.symmetric import SymmetricTraining, split_output
from nnreg.utilities.errors import ConfigurationError
from tests.training.conftest import fold_folder


def smooth_field(shape: tuple[int, int, int], amplitude: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    f = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) for _ in range(3)])
    return torch.from_numpy(f / np.abs(f).max() * amplitude).float()[None]


def reference_compose(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``v(x) + u(x + v(x))`` with scipy (linear, clamped borders): independent of nnreg.spatial."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in u.shape[1:]], indexing="ij")).astype(np.float64)
    coords = grid + v
    return v + np.stack([ndimage.map_coordinates(u[c], coords, order=1, mode="nearest") for c in range(3)])


def test_penalty_matches_reference_and_vanishes_for_true_inverses() -> None:
    shape = (12, 14, 10)
    u, w = smooth_field(shape, 1.5, 0), smooth_field(shape, 1.0, 1)
    first, second = inverse_consistency_residuals(u, w)
    np.testing.assert_allclose(first[0].numpy(), reference_compose(u[0].double().numpy(), w[0].double().numpy()),
                               atol=1e-4)
    np.testing.assert_allclose(second[0].numpy(), reference_compose(w[0].double().numpy(), u[0].double().numpy()),
                               atol=1e-4)
    expected = 0.5 * ((first ** 2).sum(1).mean() + (second ** 2).sum(1).mean())
    torch.testing.assert_close(inverse_consistency_loss(u, w), expected)
    v = smooth_field(shape, 0.8, 2)
    exact = inverse_consistency_loss(integrate_velocity(v, 9), integrate_velocity(-v, 9))
    assert exact < 1e-3 < inverse_consistency_loss(u, u)
    with pytest.raises(ValueError):
        inverse_consistency_loss(u, u[:, :2])


def test_plans_switch() -> None:
    assert SymmetricTraining.from_plans(None) is None and SymmetricTraining.from_plans(False) is None
    assert SymmetricTraining.from_plans({}).lambda_ic == 1.0
    assert SymmetricTraining.from_plans({"lambda_ic": 0.25}).lambda_ic == 0.25
    for bad in ({"lambda": 1}, {"lambda_ic": -1}, "yes"):
        with pytest.raises(ConfigurationError):
            SymmetricTraining.from_plans(bad)


def test_one_batched_call_equals_two_directions_scored_separately() -> None:
    torch.manual_seed(0)
    net = build_network(default_architecture(3, base_channels=4, flow_mid_channels=4, integration_steps=3))
    with torch.no_grad():
        for head in net.heads.values():
            head.last.weight.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    moving, fixed = [torch.nn.functional.avg_pool3d(torch.rand(1, 1, 16, 16, 16, generator=g), 3, 1, 1)
                     for _ in range(2)]
    loss_fn = DeepSupervisedRegistrationLoss(1.0, 6.0, 5, True)
    scheme = SymmetricTraining(lambda_ic=2.0)
    total, parts = scheme.step_loss(net, loss_fn, moving, fixed)
    out_f, out_b = net(moving, fixed), net(fixed, moving)
    expected = 0.5 * (loss_fn(moving, fixed, out_f)[0] + loss_fn(fixed, moving, out_b)[0]) + \
        2.0 * inverse_consistency_loss(out_f.displacement, out_b.displacement)
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-4)
    assert parts["ic"] > 0
    total.backward()
    assert all(p.grad is not None for p in net.parameters())
    half = split_output(out_f, 0, 1)
    assert half.displacement.shape == out_f.displacement.shape and len(half.levels) == len(out_f.levels)


def test_training_with_symmetric_plans_entry(train_env: dict[str, Path]) -> None:
    plans_path = train_env["preprocessed"] / "Dataset901_Tiny" / "nnRegPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_fullres"]["symmetric_training"] = {"lambda_ic": 1.0}
    plans_path.write_text(json.dumps(plans, indent=2))
    args = ["901", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--device", "cpu", "--val-pairs", "1",
            "--num-workers", "0", "--ncc-window", "5", "--no-final-validation"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    debug = json.loads((fold_folder(train_env) / "debug.json").read_text())
    assert debug["configuration"]["symmetric_training"] == {"lambda_ic": 1.0}
    assert (fold_folder(train_env) / "checkpoint_final.pth").is_file()
