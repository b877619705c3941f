"""A tiny preprocessed dataset with a tiny network, built once per session and copied per test."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.synthetic import make_learn2reg_dataset

TINY_ARCHITECTURE = {"n_levels": 3, "base_channels": 4, "flow_channels": 8, "flow_mid_channels": 4,
                     "integration_steps": 3}
TINY_BATCH = 2   # > 1, so batching is exercised; fixed, whatever the planner would choose
FAST = {"iterations_per_epoch": 2, "val_pairs": 2, "num_workers": 0, "checkpoint_every": 1, "ncc_window": 5}


@pytest.fixture(scope="session")
def tiny_preprocessed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """raw/ and preprocessed/ of Dataset901_Tiny (3d_fullres only), plans edited to a tiny network."""
    from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess

    root = tmp_path_factory.mktemp("tiny_training")
    raw = root / "raw"
    make_learn2reg_dataset(raw / "Dataset901_Tiny")
    preprocessed = root / "preprocessed"
    plan_and_preprocess(PlanAndPreprocessOptions(dataset="901", raw=str(raw), preprocessed=str(preprocessed),
                                                 configurations=("3d_fullres",), num_processes=0))
    shrink_plans(preprocessed / "Dataset901_Tiny" / "nnRegPlans.json", TINY_BATCH)
    return {"raw": raw, "preprocessed": preprocessed}


def shrink_plans(plans_path: Path, batch_size: int) -> None:
    """Edit every configuration of a plans file to the tiny network and a fixed batch size."""
    plans = json.loads(plans_path.read_text())
    for config in plans["configurations"].values():
        config["architecture"]["kwargs"].update(TINY_ARCHITECTURE)
        config["batch_size"] = batch_size
    plans_path.write_text(json.dumps(plans, indent=2))


@pytest.fixture()
def train_env(tiny_preprocessed: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """nnReg_* variables pointing at a private copy of the preprocessed data and an empty results folder."""
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(tiny_preprocessed["preprocessed"], preprocessed)
    results = tmp_path / "results"
    results.mkdir()
    env = {"raw": tiny_preprocessed["raw"], "preprocessed": preprocessed, "results": results}
    for name, path in env.items():
        monkeypatch.setenv(f"nnReg_{name}", str(path))
    return env


def fold_folder(env: dict[str, Path], fold: str = "0", trainer: str = "nnRegTrainer") -> Path:
    return env["results"] / "Dataset901_Tiny" / f"{trainer}__nnRegPlans__3d_fullres" / f"fold_{fold}"


def plain_and_augmented(tiny_preprocessed: dict[str, Path], **augmentation: bool) -> tuple[Any, Any, list[int]]:
    """Two PairDatasets over the same 4 tiny cases and pair draws: without augmentation and with ``augmentation``
    (PairDataset keywords, e.g. ``spatial=True``); and the network shape."""
    from nnreg.planning.plans import Plans
    from nnreg.training.data import PairDataset, PairSampler

    folder = tiny_preprocessed["preprocessed"] / "Dataset901_Tiny"
    config = Plans.load(folder / "nnRegPlans.json").configuration("3d_fullres")
    cases = sorted(p.name.split(".")[0] for p in (folder / config.data_identifier).glob("*.json"))[:4]
    sampler = PairSampler(cases, seed=1)
    plain = PairDataset(folder / config.data_identifier, sampler, augment=False)
    return plain, PairDataset(folder / config.data_identifier, sampler, augment=False, **augmentation), config.shape
