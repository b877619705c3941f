"""troubleshooting.md: "Every error a user can cause is one line on stderr". Run each command as a user does (a
separate process) with a bad input that is found before any work starts: the whole output, stdout and stderr
together, is that one line, naming the file, with a non-zero exit code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = {"nnreg_predict": "nnreg.cli.predict", "nnreg_evaluate": "nnreg.cli.evaluate",
            "nnreg_train": "nnreg.cli.train", "nnreg_plan_and_preprocess": "nnreg.cli.plan_and_preprocess",
            "nnreg_apply": "nnreg.cli.apply"}


def _run(command: str, *args: str | Path, cwd: Path, env: dict[str, Path]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **{f"nnReg_{k}": str(v) for k, v in env.items()}}
    environment.pop("NNREG_DISABLE_PROGRESS_BAR", None)
    code = f"import sys; sys.argv[0] = {command!r}; from {COMMANDS[command]} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def _one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    lines = result.stdout.splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("nnreg: error: "), result.stdout
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("one_line")
    env = {name: base / name for name in ("raw", "preprocessed", "results")}
    for path in env.values():
        path.mkdir()
    root = env["raw"] / "Dataset901_Tiny"
    shutil.copytree(tiny_dataset, root)
    broken = env["raw"] / "Dataset902_Broken"
    shutil.copytree(tiny_dataset, broken)
    dataset = json.loads((broken / "dataset.json").read_text())
    dataset["training"][2] = {"image": "./imagesTr/MISSING_0000.nii.gz"}
    (broken / "dataset.json").write_text(json.dumps(dataset))
    (base / "empty").mkdir()
    return {"base": base, "root": root, "broken": broken, **env}


def _env(setup: dict[str, Path]) -> dict[str, Path]:
    return {k: setup[k] for k in ("raw", "preprocessed", "results")}


def test_predict(setup: dict[str, Path]) -> None:
    """The device line used to come first."""
    base = setup["base"]
    _one_line(_run("nnreg_predict", "-i", setup["root"], "-o", base / "out", "-m", base / "no_model",
                   cwd=base, env=_env(setup)), "no_model")
    _one_line(_run("nnreg_predict", "-i", setup["root"], "-o", base / "out", "-d", "901",
                   cwd=base, env=_env(setup)), str(setup["results"]))
    # the dataset has a results folder but no trained model: the default-configuration line used to come first
    (setup["results"] / "Dataset901_Tiny").mkdir()
    _one_line(_run("nnreg_predict", "-i", setup["root"], "-o", base / "out", "-d", "901",
                   cwd=base, env=_env(setup)), "no trained model")


def test_evaluate(setup: dict[str, Path]) -> None:
    """The labels found in the dataset (and which metrics it allows) used to come first."""
    base = setup["base"]
    _one_line(_run("nnreg_evaluate", "-i", base / "empty", "-d", setup["root"], cwd=base, env=_env(setup)),
              "disp_")
    _one_line(_run("nnreg_evaluate", "-i", base / "empty", "-d", "901", "-c", "nothing.json", cwd=base,
                   env=_env(setup)), "nothing.json")


def test_train(setup: dict[str, Path]) -> None:
    base = setup["base"]
    _one_line(_run("nnreg_train", setup["root"], "0", "--device", "cpu", cwd=base, env=_env(setup)),
              str(setup["root"]), str(setup["preprocessed"]))


def test_plan_and_preprocess(setup: dict[str, Path]) -> None:
    base = setup["base"]
    _one_line(_run("nnreg_plan_and_preprocess", "-d", "902", "-np", "0", cwd=base, env=_env(setup)),
              "dataset.json", "MISSING_0000.nii.gz")


def test_apply(setup: dict[str, Path]) -> None:
    base = setup["base"]
    image = next((setup["root"] / "imagesTr").iterdir())
    _one_line(_run("nnreg_apply", "-f", base / "no_field.nii.gz", "-i", image, "-r", image, "-o",
                   base / "warped.nii.gz", cwd=base, env=_env(setup)), "no_field.nii.gz")
