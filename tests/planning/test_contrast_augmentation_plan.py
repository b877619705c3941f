"""The planner records ``contrast_augmentation`` in the plans (on when dataset.json names more than one modality,
as LUMIR 2025's T1w <- T2w validation pairs do), old plans files without the key load with it off, and the trainer
takes it from the plans unless ``nnreg_train --(no-)contrast-augmentation`` says otherwise."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnreg.cli.plan_and_preprocess import main as plan_main
from nnreg.dataset.image_io import read_image, write_image
from nnreg.planning.contrast import DatasetModalities, choose_contrast_augmentation
from nnreg.planning.plans import Plans
from nnreg.utilities.errors import ConfigurationError

T1_ONLY, MULTI_MODAL = "Dataset901_Tiny", "Dataset903_TinyMultiModal"


def add_t2w_pair(root: Path) -> None:
    """Turn a copy of the tiny T1w dataset into a LUMIR 2025-style one: a validation pair whose moving image is an
    inverted-contrast (``_0001``, T2w-like) copy, dataset.json's "modality" left at the single T1w entry."""
    meta = json.loads((root / "dataset.json").read_text())
    fixed, moving = meta["validation"][0]["fixed"], meta["validation"][0]["moving"]
    image, geometry = read_image(root / moving[2:])
    t2w = np.where(image > 0, 255.0 - image, 0.0).astype(np.float32)
    t2w_name = moving.replace("_0000.nii.gz", "_0001.nii.gz")
    write_image(t2w, geometry, root / t2w_name[2:])
    meta["validation"].append({"fixed": fixed, "moving": t2w_name})
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))


def plan(*args: str):
    return CliRunner().invoke(plan_main, ["-np", "0", "--device", "cuda", "--gpu-memory-target", "80", *args],
                              catch_exceptions=False)


@pytest.fixture()
def raw_datasets(tiny_dataset: Path, nnreg_env: dict[str, Path]) -> dict[str, Path]:
    """The tiny T1w dataset (901) and its LUMIR 2025-style multi-modal copy (903) under $nnReg_raw."""
    t1 = shutil.copytree(tiny_dataset, nnreg_env["raw"] / T1_ONLY)
    multi = shutil.copytree(tiny_dataset, nnreg_env["raw"] / MULTI_MODAL)
    add_t2w_pair(multi)
    return {"901": t1, "903": multi}


def plans_of(env: dict[str, Path], name: str, plans_name: str = "nnRegPlans") -> Plans:
    return Plans.load(env["preprocessed"] / name / f"{plans_name}.json")


def test_the_planner_records_it_for_a_multimodal_dataset_and_not_for_a_t1_only_one(
        raw_datasets: dict[str, Path], nnreg_env: dict[str, Path]) -> None:
    result = plan("-d", "901", "903", "--no-pp")
    assert result.exit_code == 0, result.output
    t1, multi = plans_of(nnreg_env, T1_ONLY), plans_of(nnreg_env, MULTI_MODAL)
    assert {c.contrast_augmentation for c in t1.configurations.values()} == {False}
    assert {c.contrast_augmentation for c in multi.configurations.values()} == {True}
    assert "0000, 0001" in multi.planner["contrast_augmentation_why"]
    raw = json.loads((nnreg_env["preprocessed"] / MULTI_MODAL / "nnRegPlans.json").read_text())
    assert raw["configurations"]["3d_fullres"]["contrast_augmentation"] is True     # in the file, for the trainer
    assert "contrast augmentation (training): off" in result.output
    assert "contrast augmentation (training): on" in result.output

    # the flag forces it; a reused plans file keeps its value, and the command says so
    result = plan("-d", "903", "--no-pp", "--no-contrast-augmentation")
    assert result.exit_code == 0, result.output
    assert plans_of(nnreg_env, MULTI_MODAL).configuration("3d_fullres").contrast_augmentation is True
    assert "was kept as it was" in result.output and "--overwrite-plans" in result.output
    result = plan("-d", "903", "--no-pp", "--no-contrast-augmentation", "--overwrite-plans")
    assert result.exit_code == 0, result.output
    forced = plans_of(nnreg_env, MULTI_MODAL)
    assert {c.contrast_augmentation for c in forced.configurations.values()} == {False}
    assert "--no-contrast-augmentation" in forced.planner["contrast_augmentation_why"]
    result = plan("-d", "901", "--no-pp", "--contrast-augmentation", "-p", "Forced")
    assert result.exit_code == 0, result.output
    assert plans_of(nnreg_env, T1_ONLY, "Forced").configuration("3d_halfres").contrast_augmentation is True


def test_the_rule() -> None:
    """More than one modality suffix or more than one declared modality: on; one of each: off; a flag wins."""
    lumir25 = DatasetModalities(declared=("T1w Brain MRI",), suffixes=("0000", "0001"))
    declared = DatasetModalities(declared=("T1w", "T2w"), suffixes=("0000",))
    t1 = DatasetModalities(declared=("T1w",), suffixes=("0000",))
    assert choose_contrast_augmentation(None, lumir25)[0] is True
    assert choose_contrast_augmentation(None, declared)[0] is True
    assert choose_contrast_augmentation(None, t1)[0] is False
    assert choose_contrast_augmentation(None, None)[0] is False
    assert choose_contrast_augmentation(False, lumir25)[0] is False
    assert choose_contrast_augmentation(True, t1)[0] is True


def test_an_old_plans_file_without_the_key_loads_with_it_off(tmp_path: Path) -> None:
    from tests.planning.test_plans_file import _config, _plans

    old = _config()
    old.pop("contrast_augmentation", None)
    child = {"inherits_from": "3d_fullres", "batch_size": 2}
    plans = Plans.from_json(_plans({"3d_fullres": old, "child": child}))
    assert plans.configuration("3d_fullres").contrast_augmentation is False
    assert plans.configuration("child").contrast_augmentation is False
    edited = Plans.from_json(_plans({"3d_fullres": old, "child": dict(child, contrast_augmentation=True)}))
    assert edited.configuration("child").contrast_augmentation is True
    (tmp_path / "P.json").write_text(json.dumps(_plans({"3d_fullres": dict(old, contrast_augmentation="yes")})))
    with pytest.raises(ConfigurationError, match="contrast_augmentation must be true or false") as error:
        Plans.load(tmp_path / "P.json")
    assert "P.json" in str(error.value)


def test_the_trainer_takes_it_from_the_plans_and_the_train_option_wins(
        raw_datasets: dict[str, Path], nnreg_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import nnreg.training.run as run_module
    from nnreg.cli.train import main as train_main
    from nnreg.training.find_trainer import find_trainer
    from nnreg.training.hyperparameters import TrainingHyperparameters

    assert plan("-d", "903", "-c", "3d_fullres").exit_code == 0
    seen: list[bool | None] = []

    def build_trainer_only(job: run_module.TrainingJob) -> None:
        """What execute_job builds first, without training: the trainer and the settings it will use."""
        trainer = find_trainer(job.trainer)(job.workspace, job.hyperparameters, torch.device("cpu"))
        seen.append(trainer.hp.contrast_augmentation)
        recorded = trainer.workspace.init_args(trainer.hp.to_json())   # what debug.json and checkpoints hold
        assert recorded["hyperparameters"]["contrast_augmentation"] is seen[-1]

    monkeypatch.setattr(run_module, "execute_job", build_trainer_only)

    def train(*flags: str) -> bool | None:
        result = CliRunner().invoke(train_main, ["903", "0", "--device", "cpu", *flags], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return seen[-1]

    assert train() is True                                       # the plans' choice
    assert train("--no-contrast-augmentation") is False          # the option wins
    plans_path = nnreg_env["preprocessed"] / MULTI_MODAL / "nnRegPlans.json"
    data = json.loads(plans_path.read_text())
    data["configurations"]["3d_fullres"]["contrast_augmentation"] = False     # a hand edit
    plans_path.write_text(json.dumps(data))
    assert train() is False
    assert train("--contrast-augmentation") is True
    with pytest.raises(ConfigurationError, match="contrast_augmentation"):
        TrainingHyperparameters(contrast_augmentation="yes")  # type: ignore[arg-type]
