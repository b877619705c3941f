"""A dead worker (killed, out of memory) in any stage is one clear error naming the stage and item, never a hang."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnreg.utilities.errors import DatasetError
from nnreg.utilities.parallel import WorkerDiedError, map_with_progress
from tests.scale.workers_helpers import square_or_die
from tests.synthetic import make_learn2reg_dataset


def test_results_in_order_and_user_errors_unchanged() -> None:
    assert map_with_progress(square_or_die, [0, 1, 2, 4, 5], 2, desc="squares") == [0, 1, 4, 16, 25]
    with pytest.raises(DatasetError, match="case_-1.nii.gz: image is all zero") as info:
        map_with_progress(square_or_die, [0, 1, -1, 2], 2, desc="squares")
    assert "in the worker process" in str(info.value.__cause__)


def test_a_killed_worker_names_the_stage_and_item() -> None:
    with pytest.raises(WorkerDiedError) as info:
        map_with_progress(square_or_die, [0, 1, 2, 3, 4, 5, 6], 2, desc="squares", label=lambda x: f"item {x}")
    message = str(info.value)
    assert message.startswith("squares: a worker process (pid ") and "item 3" in message, message
    assert "SIGKILL" in message and "\n" not in message and info.value.exit_code == 3


def _spawned_children(pid: int) -> list[int]:
    """Pids of the multiprocessing workers (``spawn_main``) whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            children.append(int(entry.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_preprocessing_worker_killed_mid_run_gives_one_line(tmp_path: Path) -> None:
    raw, pre = tmp_path / "raw", tmp_path / "preprocessed"
    make_learn2reg_dataset(raw / "Dataset903_Kill", n_train=12, n_val=0, labels=False)
    env = {**os.environ, "nnReg_raw": str(raw), "nnReg_preprocessed": str(pre)}
    command = [sys.executable, "-c", "from nnreg.cli.plan_and_preprocess import main; main()", "-d", "903", "-c",
               "3d_fullres"]
    first = subprocess.run(command + ["-np", "0", "--no-pp", "--device", "cpu"], env=env, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    process = subprocess.Popen(command + ["-np", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    victim = None
    while victim is None and process.poll() is None:
        children = _spawned_children(process.pid)
        if children:
            victim = children[0]
            os.kill(victim, signal.SIGKILL)
        else:
            time.sleep(0.01)
    _, stderr = process.communicate()
    assert victim is not None, f"the stage ended before a worker appeared: {stderr}"
    assert process.returncode == 3, f"stdout: {_}\nstderr: {stderr}"
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("nnreg: error: preprocess nnRegPlans_3d_fullres: a worker process (pid "
                              f"{victim}) was killed by signal 9"), message
    assert "while processing case TINY_00" in message, message
    assert not _spawned_children(process.pid)


def test_a_killed_prediction_reader_names_the_pairs_in_flight() -> None:
    from nnreg.inference.pairs import PairSpec
    from nnreg.inference.pipeline import _read_ahead
    from tests.scale.workers_helpers import prepare_or_die

    pairs = [PairSpec(Path("f"), Path(name)) for name in ("a", "die", "b", "c")]
    with pytest.raises(WorkerDiedError) as info:
        list(_read_ahead(pairs, prepare_or_die, 1))
    message = str(info.value)
    assert message.startswith("nnreg_predict reader: a worker process died while processing ") and "die -> f" in message
