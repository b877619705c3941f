"""Prediction split across processes (-num_parts/-part_id) and concurrent runs into one output folder (issue 13)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from nnreg.cli.predict import main
from nnreg.networks import default_architecture
from nnreg.utilities.files import atomic_path, remove_stale_temporaries
from tests.inference.helpers import planned_dataset, write_model_folder

SMALL = default_architecture(2, base_channels=8)
PREDICT = "from nnreg.cli.predict import main; main()"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("parts")
    root, plans = planned_dataset(base, n_train=5, n_val=3)   # 6 validation pairs
    folder = write_model_folder(base / "results", plans, "3d_fullres", folds=("0",), architecture=SMALL)
    reference = base / "reference"
    result = CliRunner().invoke(main, ["-i", str(root), "-o", str(reference), "-m", str(folder), "-npp", "0",
                                       "-nps", "0", "--device", "cpu", "--threads", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return {"root": root, "folder": folder, "reference": reference}


def _start(model: dict[str, Path], out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREDICT, "-i", str(model["root"]), "-o", str(out), "-m",
                             str(model["folder"]), "--device", "cpu", "--threads", "1", "-nps", "1", "-npp", "0",
                             "--disable_progress_bar", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _same_as_reference(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.glob("disp_*.nii.gz"))
    assert len(names) == 6 and sorted(p.name for p in out.glob("disp_*.nii.gz")) == names
    for name in names:
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / name)).dataobj),
                                      np.asarray(nib.load(str(reference / name)).dataobj))
    assert not list(out.rglob("*.tmp-*"))


def test_two_parts_in_parallel_give_every_pair_once(model: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs = [_start(model, out, "-num_parts", "2", "-part_id", str(k)) for k in (0, 1)]
    outputs = [run.communicate() for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr
        assert "3 pair(s) written" in stdout, stdout
    _same_as_reference(out, model["reference"])


def test_two_concurrent_full_runs_into_one_folder(model: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs = [_start(model, out), _start(model, out)]
    for run in runs:
        _, stderr = run.communicate()
        assert run.returncode == 0, stderr
    _same_as_reference(out, model["reference"])


def test_bad_part_id_is_one_line(model: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["-i", str(model["root"]), "-o", str(tmp_path), "-m", str(model["folder"]),
                                       "-num_parts", "2", "-part_id", "2"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == "nnreg: error: -part_id must be in 0..1 for -num_parts 2, got 2"


def test_cleanup_spares_live_runs_temporaries_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary of a running process survives another run's start-up cleanup; once its owner is dead it goes."""
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from nnreg.utilities.files import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'disp_0001_0002.nii.gz')!r}) as tmp:\n"
        "    tmp.write_bytes(b'half'); print(tmp, flush=True); sys.stdin.readline()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    live = Path(writer.stdout.readline().strip())
    assert live.is_file() and f"-{writer.pid}-" in live.name
    (tmp_path / "disp_0003_0004.tmp-abc.nii.gz").write_bytes(b"old")   # no owner: not nnreg's, kept
    assert remove_stale_temporaries(tmp_path) == 0
    assert live.is_file()
    writer.kill()
    writer.wait()
    assert remove_stale_temporaries(tmp_path) == 1 and not live.exists()

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    assert len(synced) == 2   # the file before the rename, its folder after
