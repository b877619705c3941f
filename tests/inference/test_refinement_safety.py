"""Refinement never makes things worse: it returns the best field it evaluated, never one whose loss is above the
network field's, stops at a non-finite loss with a finite field, refuses a folding result; and MIND-SSC registers
another contrast. Helpers and settings of test_instance_optimization.py."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nnreg.evaluation.jacobian import ndv
from nnreg.inference.instance_optimization import refine_field
from nnreg.inference.refinement_settings import InstanceOptimization, parse_overrides
from nnreg.utilities.errors import ConfigurationError
from tests.inference.test_instance_optimization import (SETTINGS, SHAPE, _as_field, _blobs, _pull_warp, _refine,
                                                        _smooth_field, _tensor)
pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _ncc_of(fixed: np.ndarray, moving: np.ndarray, field: torch.Tensor, window: int) -> float:
    from nnreg.losses import local_ncc_loss
    from nnreg.spatial import warp

    return float(local_ncc_loss(_tensor(fixed), warp(_tensor(moving), field.float()), window))


@pytest.mark.parametrize("velocity_start", ["zero", "network"])
def test_the_best_iterate_is_returned_and_never_worse_than_the_network(velocity_start: str, monkeypatch) -> None:
    """A learning rate far too large: the loss jumps about, the last iterate is bad; the result is the best field
    evaluated, and never worse by the loss than the (exact) network field itself."""
    import nnreg.inference.instance_optimization as io

    moving = _blobs(14)
    truth = _smooth_field(2.0, seed=15)
    fixed = _pull_warp(moving, truth).astype(np.float32)
    seen: list[float] = []
    original = io.Stage.loss

    def recording(self, velocity, settings):
        total, ncc = original(self, velocity, settings)
        seen.append(float(total.detach()))
        return total, ncc

    monkeypatch.setattr(io.Stage, "loss", recording)
    wild = InstanceOptimization(steps=25, lr=20.0, grid_factor=2, image_factor=1, ncc_window=5, lambda_reg=0.0,
                                patience=100, velocity_start=velocity_start)
    start = torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float()
    refined, report = refine_field(_tensor(fixed), _tensor(moving), start, wild)
    last_iterate = seen[-2]           # the loss of the last Adam iterate (before the final evaluation)
    assert last_iterate > min(seen[:-1]) + 0.01                          # the run did get worse at the end
    assert report.final_loss <= min(seen[:-1]) + 1e-6 or report.kept_network
    assert _ncc_of(fixed, moving, refined, 5) <= _ncc_of(fixed, moving, start, 5) + 1e-6
    assert torch.isfinite(refined).all()


def test_a_non_finite_loss_stops_at_once_and_keeps_a_finite_field(monkeypatch) -> None:
    import nnreg.inference.instance_optimization as io

    moving = _blobs(16)
    fixed = _pull_warp(moving, _smooth_field(2.0, seed=17)).astype(np.float32)
    calls = {"n": 0}
    original = io.TargetWindows.cc

    def poisoned(self, warped):
        calls["n"] += 1
        value = original(self, warped)
        return value * float("nan") if calls["n"] > 6 else value

    monkeypatch.setattr(io.TargetWindows, "cc", poisoned)
    settings = replace(SETTINGS, steps=50, patience=50)
    refined, report = _refine(fixed, moving, settings=settings)
    assert torch.isfinite(refined).all()
    assert report.steps_run < 10                       # stopped at the NaN, not after the patience ran out
    assert report.kept_network and "not finite" in report.reason   # its final evaluation is NaN too here


def test_a_folding_refinement_is_refused(monkeypatch) -> None:
    """A refined field that folds beyond ``max_folding_percent`` (and more than the network's) is not returned."""
    import nnreg.inference.instance_optimization as io

    moving = _blobs(18)
    fixed = _pull_warp(moving, _smooth_field(2.0, seed=19)).astype(np.float32)
    folds = torch.zeros((1, 3, *SHAPE))
    folds[0, 0, ::2] = 1.5    # neighbouring planes swap places: det < 0 on much of the grid
    real_compose = io.compose
    monkeypatch.setattr(io, "compose", lambda u, v: real_compose(u, v) + folds)
    settings = replace(SETTINGS, steps=10, velocity_start="zero", lambda_reg=0.0)
    start = torch.zeros((1, 3, *SHAPE))
    refined, report = refine_field(_tensor(fixed), _tensor(moving), start, settings)
    assert report.kept_network and "folds" in report.reason
    assert torch.equal(refined, start) and report.folding_percent == 0.0


def test_mind_similarity_registers_another_contrast() -> None:
    """A T2-like moving image (non-linear, mostly inverted contrast): MIND-SSC refinement recovers the deformation."""
    moving_t1 = _blobs(20)
    truth = _smooth_field(2.0, seed=21)
    fixed = _pull_warp(moving_t1, truth).astype(np.float32)
    inside = moving_t1 > 0
    moving = np.where(inside, (1.0 - moving_t1) ** 2 + 0.2 * np.sin(4 * moving_t1), 0.0).astype(np.float32)
    settings = replace(SETTINGS, similarity="mind", mind_dilation=1, lambda_reg=0.05, lr=0.2, steps=80)
    refined, report = _refine(fixed, moving, settings=settings)
    assert not report.kept_network and report.final_loss < report.initial_loss
    field = _as_field(refined)
    inner = (slice(4, -4),) * 3
    assert np.abs(field - truth)[inner].mean() < 0.6 * np.abs(truth)[inner].mean()
    assert ndv(field) == 0.0
    with pytest.raises(ConfigurationError, match="similarity"):
        InstanceOptimization(similarity="mi")
    assert parse_overrides("similarity=mind") == {"similarity": "mind"}


def test_pairs_of_different_modalities_refine_with_mind_unless_a_similarity_was_chosen() -> None:
    from nnreg.inference import nnRegPredictor
    from nnreg.inference.refinement_settings import MULTIMODAL_REFINEMENT
    from tests.inference.helpers import OracleNet
    from tests.inference.test_instance_optimization import _config

    def predictor(recorded: dict, overrides: dict | None = None) -> nnRegPredictor:
        made = nnRegPredictor(num_threads=1, instance_optimization_overrides=overrides)
        return made.manual_initialization(OracleNet(np.zeros((3, *SHAPE), np.float32)), _config(recorded))

    recorded = {"steps": 60}
    default = predictor(recorded)
    mixed = default.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz")
    assert mixed.similarity == "mind" and mixed.lambda_reg == MULTIMODAL_REFINEMENT["lambda_reg"]
    assert mixed.remap_steps == MULTIMODAL_REFINEMENT["remap_steps"] > 0
    wide = predictor({"steps": 40, "fine_ncc_window": 15})   # a 1 mm model's plans: two contrasts keep what was measured
    two = wide.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz")
    assert (two.fine_ncc_window, two.steps) == (9, 30)
    one = wide.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0000.nii.gz")
    assert (one.fine_ncc_window, one.steps) == (15, 40)
    assert default.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0000.nii.gz") == default.instance_optimization
    chosen = predictor(recorded, {"similarity": "lncc"})             # --instance-optimization-settings similarity=lncc
    assert chosen.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz").similarity == "lncc"
    planned = predictor({"steps": 60, "similarity": "lncc"})          # the plans say so
    assert planned.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz").similarity == "lncc"
    off = predictor({"steps": 0})
    assert not off.settings_for_pair("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz").enabled
