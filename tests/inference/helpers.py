"""Test helpers for the predictor: planned tiny datasets, model folders in the trainer's format, an oracle network.

The oracle network returns a known displacement field (given on the network grid) whatever its inputs are, so
tests can push a known field through the whole predictor and export path and compare at the end.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from click.testing import CliRunner, Result
from scipy import ndimage

from nnreg.networks import RegistrationOutput, build_network
from nnreg.planning.plans import Plans
from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from tests.synthetic import make_learn2reg_dataset

TRAINER = "nnRegTrainer"
PLANS = "nnRegPlans"


def planned_dataset(base: Path, name: str = "Dataset901_Tiny", **dataset_kwargs: Any) -> tuple[Path, Plans]:
    """Write a tiny dataset under ``base/raw`` and plan it into ``base/preprocessed`` (no preprocessing: the
    predictor does its own). Paths are passed explicitly, so no environment variable is needed."""
    root = make_learn2reg_dataset(base / "raw" / name, **dataset_kwargs)
    _, plans = plan_and_preprocess(PlanAndPreprocessOptions(dataset=str(root), raw=str(base / "raw"),
                                                            preprocessed=str(base / "preprocessed"),
                                                            num_processes=0, no_preprocessing=True))
    return root, plans


def small_model(base: Path) -> tuple[Path, Plans, Path]:
    """(raw dataset, plans, model folder) of a tiny planned dataset and a one-fold ``3d_fullres`` model of it with
    random weights of a small architecture: enough to test the plumbing around a trained model."""
    from nnreg.networks import default_architecture

    root, plans = planned_dataset(base, n_train=5, n_val=2)
    model = write_model_folder(base / "results", plans, "3d_fullres",
                               architecture=default_architecture(2, base_channels=8),
                               preprocessed=base / "preprocessed" / plans.dataset_name)
    return root, plans, model


def write_model_folder(results: Path, plans: Plans, configuration: str, folds: tuple[str, ...] = ("0",),
                       trainer: str = TRAINER, architecture: dict[str, Any] | None = None,
                       trained_configuration: str | None = None, preprocessed: Path | None = None,
                       seed: int = 0) -> Path:
    """A model folder exactly as the trainer writes it, with randomly initialised weights per fold."""
    folder = results / plans.dataset_name / f"{trainer}__{plans.plans_name}__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    plans_json = plans.to_json()
    if architecture is not None:
        plans_json["configurations"][configuration]["architecture"] = architecture
    (folder / "plans.json").write_text(json.dumps(plans_json, indent=2))
    if preprocessed is not None:
        for name in ("dataset.json", "dataset_fingerprint.json"):
            if (preprocessed / name).is_file():
                shutil.copyfile(preprocessed / name, folder / name)
    arch = plans_json["configurations"][configuration]["architecture"]
    for k, fold in enumerate(folds):
        torch.manual_seed(seed + k)
        network = build_network(arch)
        checkpoint = {
            "format_version": 1,
            "network_weights": network.state_dict(),
            "trainer_name": trainer,
            "init_args": {"dataset_name": plans.dataset_name, "plans_name": plans.plans_name,
                          "configuration": trained_configuration or configuration, "fold": fold,
                          "hyperparameters": {}},
            "epoch": 1,
        }
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


class OracleNet(nn.Module):
    """Returns ``field`` (``(3, *shape)`` on the network grid) for any input pair: a stand-in for a trained model."""

    def __init__(self, field: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("field", torch.as_tensor(np.asarray(field, dtype=np.float32))[None])

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        assert moving.shape == fixed.shape and tuple(moving.shape[2:]) == tuple(self.field.shape[2:])
        return RegistrationOutput(displacement=self.field.expand(moving.shape[0], -1, -1, -1, -1).clone())


def smooth_field(shape: tuple[int, int, int], amplitude: float = 2.0, seed: int = 0) -> np.ndarray:
    """A smooth, analytic ``(H, W, D, 3)`` voxel-unit field (low frequencies only, so resampling is exact-ish)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    comps = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, 3)
        comps.append(amplitude * np.sin(np.pi * grids[0] + phase[0]) * np.cos(np.pi * grids[1] + phase[1])
                     * np.sin(np.pi * grids[2] + phase[2]))
    return np.stack(comps, axis=-1).astype(np.float32)


def textured_pair(shape: tuple[int, int, int], seed: int, sigma: float, border: int,
                  shift: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(fixed, moving) float32: a moving image of Gaussian-smoothed noise in [0, 1] with ``border`` zero voxels on
    each side, and the fixed image its linear pull warp ``moving(x + shift(x))`` by scipy (``x`` the (3, H, W, D)
    voxel grid)."""
    rng = np.random.default_rng(seed)
    moving = ndimage.gaussian_filter(rng.random(shape), sigma)
    moving = (moving - moving.min()) / (moving.max() - moving.min())
    b = border
    moving[:b], moving[-b:], moving[:, :b], moving[:, -b:], moving[..., :b], moving[..., -b:] = 0, 0, 0, 0, 0, 0
    grid = np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float64)
    fixed = ndimage.map_coordinates(moving, grid + shift(grid), order=1, mode="constant")
    return fixed.astype(np.float32), moving.astype(np.float32)


def invoke_cli(command: object, *args: object) -> Result:
    """Run a click command as a user would (without nnreg's console handler, so stderr holds only the error)."""
    logger = logging.getLogger("nnreg")
    for handler in [h for h in logger.handlers if getattr(h, "_nnreg_console", False)]:
        logger.removeHandler(handler)
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result: Result, *fragments: str) -> None:
    """The command failed with exit code 2 and one ``nnreg: error:`` line holding every fragment."""
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("nnreg: error:"), result.stderr
    for fragment in fragments:
        assert fragment in line, line
