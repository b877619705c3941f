"""LUMIR 2025 end to end at a tiny size, through the commands a user types: a Learn2Reg folder laid out as the LUMIR25
download (T1w training images ``LUMIRMRI_XXXX_0000``, validation pairs T1w <- T1w and T1w <- T2w ``_0001``, one
T1w <- ``_0002`` pair for the evaluator's long file name) -> ``nnreg_plan_and_preprocess`` -> ``nnreg_train``
(2 steps) -> ``nnreg_predict`` -> ``nnreg_evaluate --lumir25`` with evaluation configs named as LUMIR25's.

The expected file names and case keys are written out here from LUMIR25's ``evaluation.py`` (id = characters
[-16:-12] of the path, modality = [-11:-7]; ``disp_<fix>_<mov>`` when the modalities are equal or 0000 <- 0001,
``disp_<fix>_<fmod>_<mov>_<mmod>`` otherwise), not taken from nnreg's own naming module.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from nnreg.dataset.image_io import Geometry, write_image
from tests.synthetic import LABELS, _landmarks, make_subject

SHAPE = (20, 24, 20)
DATASET = "Dataset925_LUMIR25Tiny"
T1_PAIRS = [("3455_0000", "3454_0000"), ("3456_0000", "3455_0000")]            # LUMIR 2024's in-domain pairs
MM_PAIRS = [("4024_0000", "4023_0001"), ("4025_0000", "4024_0001")]            # LUMIR 2025's T1w <- T2w pairs
OTHER_PAIR = ("4025_0000", "4024_0002")                                         # another contrast: the long name
# the names LUMIR25's evaluation.py looks for
EXPECTED_FILES = {"disp_3455_3454.nii.gz", "disp_3456_3455.nii.gz", "disp_4024_4023.nii.gz",
                  "disp_4025_4024.nii.gz", "disp_4025_0000_4024_0002.nii.gz"}


def contrast(image: np.ndarray, modality: str) -> np.ndarray:
    """T1w (0000) as made; a T2w-like inversion (0001: fluid bright, white matter dark); a FLAIR-like curve (0002)."""
    brain = image > 0
    if modality == "0001":
        return np.where(brain, 255.0 - 0.9 * image, 0.0).astype(np.float32)
    if modality == "0002":
        return np.where(brain, np.maximum(255.0 - 1.2 * np.abs(image - 150.0), 1.0), 0.0).astype(np.float32)
    return image


def path_of(image: str, folder: str = "imagesVal") -> str:
    return f"./{folder}/LUMIRMRI_{image}.nii.gz"


def pairs_json(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"fixed": path_of(fixed), "moving": path_of(moving)} for fixed, moving in pairs]


def build_lumir25(root: Path) -> Path:
    """The tiny LUMIR25-style folder: images, labels (every validation image), landmarks (the T1w pairs), configs."""
    geometry = Geometry(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    training = []
    for index in range(5):
        name = f"LUMIRMRI_{index:04d}_0000.nii.gz"
        write_image(make_subject(SHAPE, index)[0], geometry, root / "imagesTr" / name)
        training.append({"image": f"./imagesTr/{name}"})
    pairs = [*T1_PAIRS, *MM_PAIRS, OTHER_PAIR]
    images = sorted({image for pair in pairs for image in pair})
    for image in images:
        subject, modality = image.split("_")
        t1w, labels = make_subject(SHAPE, int(subject))
        name = f"LUMIRMRI_{image}.nii.gz"
        write_image(contrast(t1w, modality), geometry, root / "imagesVal" / name)
        write_image(labels, geometry, root / "labelsVal" / name)
        if modality == "0000":
            write_image(_landmarks(labels), geometry, root / "landmarksVal" / name)
    meta = {"name": "LUMIR", "release": "0.1", "pairings": "unpaired", "provided_data": {"0": ["image"]},
            "modality": {"0": "T1w Brain MRI"}, "labels": {}, "tensorImageSize": {"0": "3D"},
            "tensorImageShape": {"0": list(SHAPE)}, "numTraining": len(training), "training": training,
            "numValidation": len(pairs), "validation": pairs_json(pairs)}
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    labels = [0, *sorted(LABELS.values())]
    segmentation = [{"name": "Non-diffeomorphic Volumes", "metric": "ndv"},
                    {"name": "DSC", "metric": "dice", "labels": labels},
                    {"name": "HD95", "metric": "hd95", "labels": labels}]
    configs = {"LUMIR25_VAL_Landmark": (T1_PAIRS, [{"name": "TRE_lm", "metric": "tre", "dest": "landmarks"}]),
               "LUMIR25_VAL_LUMIR24_Segmentation": (T1_PAIRS, segmentation),
               "LUMIR25_VAL_MultiModal_Segmentation": ([*MM_PAIRS, OTHER_PAIR], segmentation)}
    for name, (config_pairs, methods) in configs.items():
        config = {"name": "LUMIR", "evaluation_methods": methods, "expected_shape": [*SHAPE, 3],
                  "eval_pairs": pairs_json(config_pairs), "eval_config_version": 0.0, "masked_evaluation": False}
        (root / f"{name}_evaluation_config.json").write_text(json.dumps(config, indent=4))
    return root


def official_name(fixed: str, moving: str) -> str:
    """LUMIR25's evaluation.py: the short name for equal modalities or 0000 <- 0001, else the long one."""
    fix_id, fix_mod, mov_id, mov_mod = fixed[-16:-12], fixed[-11:-7], moving[-16:-12], moving[-11:-7]
    if fix_mod == mov_mod or (fix_mod == "0000" and mov_mod == "0001"):
        return f"disp_{fix_id}_{mov_id}.nii.gz"
    return f"disp_{fix_id}_{fix_mod}_{mov_id}_{mov_mod}.nii.gz"


def run(command: Any, *args: object) -> Result:
    """One command in this process, as a user runs it. Each CliRunner call swaps stderr, so the console log handler
    bound to an earlier call's stream is dropped first (the command installs a fresh one)."""
    logger = logging.getLogger("nnreg")
    for handler in [h for h in logger.handlers if getattr(h, "_nnreg_console", False)]:
        logger.removeHandler(handler)
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_lumir25_from_dataset_folder_to_metrics(nnreg_env: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from nnreg.cli.evaluate import main as evaluate
    from nnreg.cli.plan_and_preprocess import main as plan_and_preprocess
    from nnreg.cli.predict import main as predict
    from nnreg.cli.train import main as train
    from nnreg.dataset.naming import displacement_filename
    from nnreg.inference.predictor import nnRegPredictor

    root = build_lumir25(nnreg_env["raw"] / DATASET)
    validation = json.loads((root / "dataset.json").read_text())["validation"]

    # plan: the T1w <- T2w validation pairs make the planner record contrast augmentation for training
    run(plan_and_preprocess, "-d", "925", "-np", "0", "--device", "cpu", "--memory-target", "2", "-c", "3d_fullres")
    plans = json.loads((nnreg_env["preprocessed"] / DATASET / "nnRegPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["contrast_augmentation"] is True

    run(train, "925", "0", "--device", "cpu", "--epochs", "1", "--iterations-per-epoch", "2", "--val-pairs", "1",
        "--num-workers", "0", "--ncc-window", "5")
    fold = nnreg_env["results"] / DATASET / "nnRegTrainer__nnRegPlans__3d_fullres" / "fold_0"
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["init_args"]["hyperparameters"]["contrast_augmentation"] is True      # taken from the plans
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["dataset_validation"]["num_pairs"] == len(validation)

    # predict every validation pair, with a short refinement: MIND-SSC where the modality suffixes differ
    chosen: dict[tuple[str, str], str] = {}
    settings_for_pair = nnRegPredictor.settings_for_pair

    def spy(self: nnRegPredictor, fixed: str | Path, moving: str | Path) -> Any:
        settings = settings_for_pair(self, fixed, moving)
        chosen[(Path(fixed).name[9:18], Path(moving).name[9:18])] = settings.similarity
        return settings

    monkeypatch.setattr(nnRegPredictor, "settings_for_pair", spy)
    out = tmp_path / "predictions"
    predicted = run(predict, "-i", root, "-o", out, "-d", "925", "-c", "3d_fullres", "-f", "0", "--device", "cpu",
                    "-npp", "0", "-nps", "0", "--instance-optimization", "2")
    names = {p.name for p in out.glob("disp_*.nii.gz")}
    assert names == EXPECTED_FILES
    assert names == {official_name(p["fixed"], p["moving"]) for p in validation}
    assert names == {displacement_filename(p["fixed"], p["moving"]) for p in validation}
    assert chosen == {**{pair: "lncc" for pair in T1_PAIRS}, **{pair: "mind" for pair in [*MM_PAIRS, OTHER_PAIR]}}
    for fixed, moving in [*MM_PAIRS, OTHER_PAIR]:
        assert f"LUMIRMRI_{fixed}.nii.gz <- LUMIRMRI_{moving}.nii.gz: the modalities differ, refinement with mind" \
            in predicted.stderr
    assert "LUMIRMRI_3454_0000.nii.gz: the modalities differ" not in predicted.stderr

    # evaluate as LUMIR25 does, with its three kinds of configs
    metrics_path = tmp_path / "metrics.json"
    configs = [f"LUMIR25_VAL_{name}_evaluation_config.json"
               for name in ("Landmark", "LUMIR24_Segmentation", "MultiModal_Segmentation")]
    run(evaluate, "-i", out, "-d", root, "-c", *configs, "-o", metrics_path, "--lumir25")
    metrics = json.loads(metrics_path.read_text())
    assert list(metrics) == ["name", "aggregates", "cases", "eval_version"] and metrics["eval_version"] == "3.0"
    assert set(metrics["cases"]) == {f"{fixed}<--{moving}" for fixed, moving in [*T1_PAIRS, *MM_PAIRS, OTHER_PAIR]}
    aggregates = metrics["aggregates"]
    assert {"DSC", "HD95", "TRE_lm", "Non-diffeomorphic Volumes", "ID_dice", "MM_dice"} <= set(aggregates)
    assert all(set(value) == {"mean", "std", "30"} for value in aggregates.values())
    tre = [case["TRE_lm"]["mean"] for case in metrics["cases"].values() if "TRE_lm" in case]
    dice = [case["DSC"]["mean"] for case in metrics["cases"].values()]
    assert len(tre) == len(T1_PAIRS) and np.isfinite(tre).all()
    assert aggregates["TRE_lm"]["30"] == pytest.approx(float(np.quantile(tre, 0.7)))    # LUMIR25's robustness
    assert aggregates["DSC"]["30"] == pytest.approx(float(np.quantile(dice, 0.3)))
    mm = [metrics["cases"][f"{fixed}<--{moving}"]["DSC"]["mean"] for fixed, moving in [*MM_PAIRS, OTHER_PAIR]]
    assert aggregates["MM_dice"]["mean"] == pytest.approx(float(np.mean(mm)))
    assert aggregates["ID_dice"]["mean"] == pytest.approx(float(np.mean(
        [metrics["cases"][f"{fixed}<--{moving}"]["DSC"]["mean"] for fixed, moving in T1_PAIRS])))
    assert 0.0 < aggregates["DSC"]["mean"] <= 1.0
    assert np.isfinite(aggregates["Non-diffeomorphic Volumes"]["mean"])
