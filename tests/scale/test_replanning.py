"""Re-planning a model folder never orphans its trained folds (issue 13): checkpoints carry their own plans entry,
training refuses to replace plans that other folds need, the predictor builds each fold from its checkpoint and
refuses to ensemble folds of different preprocessing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from nnreg.cli.predict import main as predict_main
from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from nnreg.training import run_training
from nnreg.utilities.errors import ConfigurationError
from tests.synthetic import make_learn2reg_dataset

TINY = {"n_levels": 3, "base_channels": 4, "flow_channels": 8, "flow_mid_channels": 4, "integration_steps": 3}
FAST = {"epochs": 1, "iterations_per_epoch": 1, "val_pairs": 1, "num_workers": 0, "checkpoint_every": 1,
        "ncc_window": 5, "final_validation": False}


def _plan(raw: Path, pre: Path, overwrite: bool, **kwargs: object) -> Path:
    """Plan (and preprocess) 3d_fullres, then shrink the network to ``TINY`` updated by ``kwargs`` (a re-plan
    that chose another network / normalisation)."""
    options = PlanAndPreprocessOptions(dataset="904", raw=str(raw), preprocessed=str(pre), num_processes=0,
                                       configurations=("3d_fullres",), overwrite_plans=overwrite,
                                       no_preprocessing=True)
    plan_and_preprocess(options)
    path = pre / "Dataset904_Replan" / "nnRegPlans.json"
    plans = json.loads(path.read_text())
    config = plans["configurations"]["3d_fullres"]
    config["architecture"]["kwargs"].update({**TINY, **kwargs.get("architecture", {})})
    config["batch_size"] = 1
    config["normalization"].update(kwargs.get("normalization", {}))
    path.write_text(json.dumps(plans, indent=2))
    options.no_preprocessing = False
    options.overwrite_plans = False
    plan_and_preprocess(options)   # preprocess with the (edited) plans
    return path


def _predict(root: Path, out: Path, folder: Path, *folds: str) -> Result:
    return CliRunner().invoke(predict_main, ["-i", str(root), "-o", str(out), "-m", str(folder), "-f", *folds,
                                             "-npp", "0", "-nps", "0", "--device", "cpu"], catch_exceptions=False)


@pytest.fixture()
def replanned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    raw, pre, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    root = make_learn2reg_dataset(raw / "Dataset904_Replan", n_train=5, n_val=2)
    for name, path in (("raw", raw), ("preprocessed", pre), ("results", results)):
        monkeypatch.setenv(f"nnReg_{name}", str(path))
    _plan(raw, pre, overwrite=False)
    fold0 = run_training("904", "0", device="cpu", overrides=FAST)
    original = tmp_path / "original_model"
    shutil.copytree(fold0.parent, original)
    return {"root": root, "raw": raw, "pre": pre, "model": fold0.parent, "original": original}


def test_replan_then_predict_with_older_folds(replanned: dict[str, Path], tmp_path: Path) -> None:
    model = replanned["model"]
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["architecture"]["kwargs"]["base_channels"] == 4
    assert checkpoint["plans_configuration"]["normalization"]["scheme"]

    # re-plan under the same name: another network and another normalisation
    _plan(replanned["raw"], replanned["pre"], overwrite=True, architecture={"base_channels": 6},
          normalization={"upper": 200.0})
    with pytest.raises(ConfigurationError) as info:
        run_training("904", "1", device="cpu", overrides=FAST)
    message = str(info.value)
    assert "fold(s) 0 " in message and "-p NEWNAME" in message and "move fold_0" in message, message
    assert json.loads((model / "plans.json").read_text()) == \
        json.loads((replanned["original"] / "plans.json").read_text())        # not replaced

    # the user moves fold 0 away, trains fold 1 with the new plans, and puts fold 0 back
    shutil.move(str(model / "fold_0"), str(tmp_path / "fold_0"))
    run_training("904", "1", device="cpu", overrides=FAST)
    shutil.move(str(tmp_path / "fold_0"), str(model / "fold_0"))
    assert json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"][
        "kwargs"]["base_channels"] == 6

    # fold 0 alone runs with its own network and preprocessing: the same fields as before the re-plan
    new, old = _predict(replanned["root"], tmp_path / "new", model, "0"), \
        _predict(replanned["root"], tmp_path / "old", replanned["original"], "0")
    assert new.exit_code == 0 and old.exit_code == 0, new.stderr + old.stderr
    names = sorted(p.name for p in (tmp_path / "old").glob("disp_*.nii.gz"))
    assert names and names == sorted(p.name for p in (tmp_path / "new").glob("disp_*.nii.gz"))
    for name in names:
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "new" / name)).dataobj),
                                      np.asarray(nib.load(str(tmp_path / "old" / name)).dataobj))
    assert _predict(replanned["root"], tmp_path / "one", model, "1").exit_code == 0

    # folds 0 and 1 were trained on different preprocessing: refused in one line naming them
    both = _predict(replanned["root"], tmp_path / "both", model, "0", "1")
    assert both.exit_code == 2
    line = both.stderr.strip().splitlines()[-1]
    assert line.startswith("nnreg: error: ") and "fold 0; fold 1" in line and "-f 0 or -f 1" in line, line
    assert "normalization" in line, line
