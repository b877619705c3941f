"""Open file descriptors stay bounded in training data loading, whatever the number of images (issue 13)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnreg.preprocessing.storage import save_case

ROOT = Path(__file__).resolve().parents[2]
NUM_IMAGES = 300
LIMIT = 128


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 preprocessed 16^3 cases (more than the descriptor limit the probe sets)."""
    folder = tmp_path_factory.mktemp("many") / "nnRegPlans_3d_fullres"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        save_case(folder, f"SC_{i:04d}_0000", rng.random((16, 16, 16), dtype=np.float32), None,
                  {"case_id": f"SC_{i:04d}_0000"})
    return folder


def _probe(folder: Path, max_open: int, workers: int) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "tests.scale.fd_probe", str(folder), str(LIMIT), str(max_open),
                             str(workers)], cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stderr[-3000:]
    return result.returncode, json.loads(lines[-1])


def test_workers_visit_more_images_than_the_descriptor_limit(many_cases: Path) -> None:
    code, report = _probe(many_cases, max_open=16, workers=2)
    assert code == 0, report
    assert report["visited"] == NUM_IMAGES > LIMIT


def test_the_limit_is_real_without_the_bound(many_cases: Path) -> None:
    """The same run keeping every array open (the old behaviour) runs out of descriptors: the test can fail."""
    code, report = _probe(many_cases, max_open=100_000, workers=0)
    assert code == 1 and "Too many open files" in report["error"], report
