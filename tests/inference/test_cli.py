"""``nnreg_predict`` end to end on a tiny dataset: output format, inputs, options, --continue and every bad input."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from nnreg.cli.predict import main
from nnreg.dataset.image_io import Geometry, read_displacement, read_image, write_image
from nnreg.networks import default_architecture
from tests.inference.helpers import planned_dataset, write_model_folder

SMALL = default_architecture(2, base_channels=8)   # the plumbing is under test, not the network: keep it cheap


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("predict")
    root, plans = planned_dataset(base, n_train=5, n_val=2)
    results = base / "results"
    pre = base / "preprocessed" / plans.dataset_name
    full = write_model_folder(results, plans, "3d_fullres", folds=("0", "1"), architecture=SMALL, preprocessed=pre)
    half = write_model_folder(results, plans, "3d_halfres", folds=("0",), architecture=SMALL,
                              trained_configuration="3d_fullres")
    return {"base": base, "root": root, "results": results, "full": full, "half": half}


def run(*args: object) -> Result:
    """Invoke the CLI in-process. Each CliRunner call swaps stderr, so the console log handler bound to an earlier
    call's stream is dropped first (the command installs a fresh one)."""
    logger = logging.getLogger("nnreg")
    for handler in [h for h in logger.handlers if getattr(h, "_nnreg_console", False)]:
        logger.removeHandler(handler)
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def expect_error(result: Result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("nnreg: error:"), result.stderr
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_dataset_validation_pairs_in_challenge_format(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("-i", setup["root"], "-o", out, "-d", "901", "-c", "3d_fullres", "--results", setup["results"],
                 "-npp", "0", "-nps", "0")
    assert result.exit_code == 0, result.stderr
    pairs = json.loads((setup["root"] / "dataset.json").read_text())["validation"]
    names = sorted(p.name for p in out.glob("disp_*.nii.gz"))
    expected = sorted(f"disp_{Path(p['fixed']).name[-16:-12]}_{Path(p['moving']).name[-16:-12]}.nii.gz" for p in pairs)
    assert names == expected
    for name in names:
        image = nib.load(str(out / name))   # what the official evaluator does
        assert image.get_data_dtype() == np.float32
        field = np.asarray(image.get_fdata())
        assert field.shape == (32, 40, 32, 3) and np.isfinite(field).all()

    from nnreg.cli.evaluate import main as evaluate_main

    evaluated = CliRunner().invoke(evaluate_main, ["-i", str(out), "-d", str(setup["root"]), "-o",
                                                   str(tmp_path / "metrics.json")], catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["cases"]) == len(pairs)


def test_one_pair_with_every_extra_in_worker_processes(setup: dict[str, Path], tmp_path: Path) -> None:
    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    out = tmp_path / "out"
    result = run("--fixed", images[0], "--moving", images[1], "-o", out, "-m", setup["full"], "-f", "0",
                 "--itk", "--save-warped", "--qc", "--warp-labels", setup["root"] / "labelsVal", "-npp", "1", "-nps", "1")
    assert result.exit_code == 0, result.stderr
    name = f"{images[0].name[-16:-12]}_{images[1].name[-16:-12]}"
    for path in (f"disp_{name}.nii.gz", f"itk/disp_{name}.nii.gz", f"warped/warped_{name}.nii.gz",
                 f"warped_labels/warped_{name}.nii.gz", f"qc/disp_{name}.png"):
        assert (out / path).is_file(), path
    warped_labels, geometry = read_image(out / f"warped_labels/warped_{name}.nii.gz", dtype=np.int32)
    fixed_labels, fixed_geometry = read_image(setup["root"] / "labelsVal" / images[0].name, dtype=np.int32)
    assert geometry == fixed_geometry and set(np.unique(warped_labels)) <= set(np.unique(fixed_labels)) | {0}
    assert not list(out.rglob("*.tmp-*"))


def test_pairs_files_json_csv_and_long_names(setup: dict[str, Path], tmp_path: Path) -> None:
    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    other = tmp_path / "inputs" / images[1].name.replace("_0000.nii.gz", "_0002.nii.gz")   # another modality
    other.parent.mkdir()
    shutil.copyfile(images[1], other)
    (tmp_path / "inputs" / "pairs.json").write_text(json.dumps([{"fixed": str(images[0]), "moving": other.name}]))
    (tmp_path / "inputs" / "pairs.csv").write_text(f"fixed,moving\n{images[1]},{images[0]}\n")
    # (a 0000 fixed with a 0001 moving image keeps the short name: LUMIR 2025's rule, tests/dataset)
    for pairs_file, expected in (("pairs.json", "disp_{0}_0000_{1}_0002.nii.gz"), ("pairs.csv", "disp_{1}_{0}.nii.gz")):
        out = tmp_path / pairs_file
        result = run("-i", tmp_path / "inputs" / pairs_file, "-o", out, "-m", setup["full"], "-f", "1")
        assert result.exit_code == 0, result.stderr
        ids = (images[0].name[-16:-12], images[1].name[-16:-12])
        assert [p.name for p in out.glob("disp_*")] == [expected.format(*ids)]


def test_existing_output_is_overwritten_or_continued(setup: dict[str, Path], tmp_path: Path) -> None:
    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    out = tmp_path / "out"
    args = ("--fixed", images[0], "--moving", images[1], "-o", out, "-m", setup["full"], "-f", "0")
    assert run(*args).exit_code == 0
    target = next(out.glob("disp_*.nii.gz"))
    target.write_bytes(b"stale")
    assert run(*args, "--continue").exit_code == 0
    assert target.read_bytes() == b"stale"              # --continue keeps finished files
    result = run(*args)
    assert result.exit_code == 0 and "overwritten" in result.stderr
    assert nib.load(str(target)).shape == (32, 40, 32, 3)  # overwritten (atomically) without --continue


def test_different_grids_are_resampled_and_said(setup: dict[str, Path], tmp_path: Path) -> None:
    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    array, geometry = read_image(images[1])
    coarse = Geometry((16, 20, 16), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), geometry.direction)
    moving = tmp_path / "MOV_0100_0000.nii.gz"
    write_image(array[::2, ::2, ::2], coarse, moving)
    result = run("--fixed", images[0], "--moving", moving, "-o", tmp_path / "out", "-m", setup["full"], "-f", "0")
    assert result.exit_code == 0, result.stderr
    assert "resampled onto the fixed grid" in result.stderr
    assert nib.load(str(next((tmp_path / "out").glob("disp_*")))).shape == (32, 40, 32, 3)


def test_missing_fold_is_named(setup: dict[str, Path], tmp_path: Path) -> None:
    expect_error(run("-i", setup["root"], "-o", tmp_path, "-m", setup["full"], "-f", "3"),
                 "fold 3", "folds with it: 0, 1")


def test_model_trained_on_another_configuration(setup: dict[str, Path], tmp_path: Path) -> None:
    expect_error(run("-i", setup["root"], "-o", tmp_path, "-m", setup["full"], "-c", "3d_halfres"),
                 "trained on configuration '3d_fullres'", "'3d_halfres'")
    expect_error(run("-i", setup["root"], "-o", tmp_path, "-d", "901", "-c", "3d_halfres", "--results",
                     setup["results"]), "trained on configuration '3d_fullres'")


def test_nan_in_an_image(setup: dict[str, Path], tmp_path: Path) -> None:
    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    array, geometry = read_image(images[1])
    array[3, 4, 5] = np.nan
    bad = tmp_path / "BAD_0001_0000.nii.gz"
    write_image(array, geometry, bad)
    expect_error(run("--fixed", images[0], "--moving", bad, "-o", tmp_path / "out", "-m", setup["full"]),
                 str(bad), "NaN")
    assert not (tmp_path / "out").exists()          # a failed run leaves no empty folder of its own
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    expect_error(run("--fixed", images[0], "--moving", bad, "-o", mine, "-m", setup["full"]), "NaN")
    assert (mine / "sub").is_dir()                  # ... and never touches a folder the user had


def test_unusable_inputs_and_models(setup: dict[str, Path], tmp_path: Path) -> None:
    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"fixed": str(images[0]), "moving": "nope_0001_0000.nii.gz"}]))
    expect_error(run("-i", pairs, "-o", tmp_path / "o", "-m", setup["full"]), "nope_0001_0000.nii.gz", "does not exist")
    expect_error(run("-i", setup["root"], "-o", tmp_path / "o"), "-d DATASET", "-m MODEL_FOLDER")
    expect_error(run("-i", setup["root"], "-o", tmp_path / "o", "-d", "777", "--results", setup["results"]), "777")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    expect_error(run("--fixed", images[0], "--moving", images[1], "-o", a_file, "-m", setup["full"]),
                 "not a folder")
    broken = tmp_path / "broken"
    shutil.copytree(setup["full"], broken)
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(b"PK\x03\x04 truncated")
    expect_error(run("-i", setup["root"], "-o", tmp_path / "o", "-m", broken, "-c", "3d_fullres"),
                 "checkpoint_final.pth", "cannot read checkpoint")
    expect_error(run("-i", setup["root"], "-o", tmp_path / "o", "-m", setup["full"], "-chk", "checkpoint_best.pth"),
                 "checkpoint_best.pth")


def test_checkpoint_is_loaded_with_weights_only(setup: dict[str, Path]) -> None:
    """The checkpoints the trainer writes (tensors, numbers, strings) load under torch's safe unpickler."""
    checkpoint = torch.load(setup["full"] / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["init_args"]["configuration"] == "3d_fullres"


def test_default_configuration_on_cpu_is_halfres_when_trained(setup: dict[str, Path], tmp_path: Path) -> None:
    from nnreg.inference.model_folder import default_configuration

    dataset_folder = setup["full"].parent
    assert default_configuration(dataset_folder, "nnRegTrainer", "nnRegPlans", "cpu") == "3d_halfres"
    assert default_configuration(dataset_folder, "nnRegTrainer", "nnRegPlans", "cuda") == "3d_fullres"
    assert default_configuration(tmp_path, "nnRegTrainer", "nnRegPlans", "cpu") == "3d_fullres"
    # plans made for the CPU are cheap at full resolution: no switch
    cpu_dataset = tmp_path / "cpu_planned"
    for name in ("3d_fullres", "3d_halfres"):
        folder = cpu_dataset / f"nnRegTrainer__nnRegPlans__{name}"
        folder.mkdir(parents=True)
        plans = json.loads((setup["full"] / "plans.json").read_text())
        plans["planner"]["device"] = "cpu"
        (folder / "plans.json").write_text(json.dumps(plans))
    assert default_configuration(cpu_dataset, "nnRegTrainer", "nnRegPlans", "cpu") == "3d_fullres"


def _other_units(image: np.ndarray) -> np.ndarray:
    """The same anatomy from "another scanner": 0-4000 units, gamma 0.8 and a smooth bias field (0.8 to 1.2)."""
    bias = np.linspace(0.8, 1.2, image.shape[0], dtype=np.float32)[:, None, None]
    return (4000.0 * (np.clip(image, 0, None) / 255.0) ** 0.8 * bias).astype(np.float32)


def test_image_in_other_units_is_standardised_with_one_warning(setup: dict[str, Path], tmp_path: Path) -> None:
    """Issue 23 item 4: a fixed_range [0, 255] model and a 0-4000 moving image with bias and gamma: one warning line
    naming the file, an input that is not a white blob, and nearly the field of the image in the model's units."""
    from nnreg.inference import nnRegPredictor

    images = sorted((setup["root"] / "imagesVal").glob("*.nii.gz"))
    moving, geometry = read_image(images[1])
    foreign = tmp_path / "TINY_0099_0000.nii.gz"
    write_image(_other_units(moving), geometry, foreign)
    fields = {}
    for name, path in (("units", images[1]), ("foreign", foreign)):
        result = run("--fixed", images[0], "--moving", path, "-o", tmp_path / name, "-m", setup["full"], "-f", "0")
        assert result.exit_code == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
        assert len(warnings) == (1 if name == "foreign" else 0), result.stderr
        if warnings:
            assert foreign.name in warnings[0] and "range" in warnings[0], warnings[0]
        fields[name] = read_displacement(next((tmp_path / name).glob("disp_*.nii.gz")))
    # Measured on this random-weight model with its plans' refinement (field difference / field): 0.30 here; the
    # bias field alone, in the model's units, already makes 0.24 and the x16 units alone 0.05; clipped to a blob
    # (before the fix) 0.86, and a zero field 1.0. 0.4 separates the two.
    difference = np.linalg.norm(fields["foreign"] - fields["units"]) / np.linalg.norm(fields["units"])
    assert difference < 0.4, difference
    predictor = nnRegPredictor(instance_optimization=0).initialize_from_trained_model_folder(setup["full"], ["0"])
    prepared = predictor.prepare(images[0], foreign)
    inside = prepared.moving_network > 0
    saturated = float((prepared.moving_network[inside] >= 0.999).mean())
    assert saturated < 0.02, saturated      # clipping 0-4000 at 255 saturates ~all of the foreground


def test_start_identity_refines_without_running_the_network(setup: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--start identity``: no fold's weights are ever loaded, the refinement still moves the field; without a
    refinement it is one error line (the fields would all be zero)."""
    from nnreg.inference import predictor as predictor_module

    def no_network(self: object, index: int) -> None:
        raise AssertionError("the network was run")

    monkeypatch.setattr(predictor_module.nnRegPredictor, "_load_fold", no_network)
    out = tmp_path / "identity"
    result = run("-i", setup["root"], "-o", out, "-d", "901", "-c", "3d_fullres", "--results", setup["results"],
                 "-npp", "0", "-nps", "0", "--start", "identity", "--instance-optimization", "3")
    assert result.exit_code == 0, result.stderr
    fields = [read_displacement(p) for p in sorted(out.glob("disp_*.nii.gz"))]
    assert fields and all(np.abs(f).max() > 1e-3 for f in fields)
    expect_error(run("-i", setup["root"], "-o", tmp_path / "none", "-d", "901", "-c", "3d_fullres", "--results",
                     setup["results"], "--start", "identity", "--instance-optimization", "0"),
                 "--start identity needs a refinement")
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
