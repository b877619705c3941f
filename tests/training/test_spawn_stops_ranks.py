"""``nnreg_train --num-gpus N``'s ranks end with the command: on SIGTERM (the command unwinds and stops them) and
when the command is killed outright (the kernel's parent-death signal), instead of training on as orphans; a rank
killed by a signal is reported as such (exit code 3), not as a user error."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnreg.utilities.files import process_alive

RANK_MODULE = '''
import os
import sys
import time
from pathlib import Path


def sleeper(folder):
    import multiprocessing

    queue = multiprocessing.get_context("spawn").Queue()   # semaphores, as a rank's data workers hold
    Path(folder, f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    if os.environ["RANK"] == "1" and Path(folder, "die").exists():
        os.kill(os.getpid(), 9)
    time.sleep(120)
'''

SCRIPT = '''
import sys

import click

from nnreg.cli.common import user_errors_as_one_line
from nnreg.training.distributed import spawn
from ranks_mod import sleeper


@click.command()
@user_errors_as_one_line
def main() -> None:
    spawn(sleeper, 2, (sys.argv[1],))


if __name__ == "__main__":
    main(sys.argv[2:])
'''


def _start(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    (tmp_path / "ranks_mod.py").write_text(RANK_MODULE)
    (tmp_path / "command.py").write_text(SCRIPT)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(tmp_path / "command.py"), str(tmp_path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all((tmp_path / f"rank{r}.pid").exists() for r in (0, 1)):
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1) if (tmp_path / f"rank{r}.pid").exists()]
    return process, pids


def _gone(pids: list[int], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return not any(process_alive(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_ranks_end_with_the_command(tmp_path: Path, how: signal.Signals) -> None:
    process, pids = _start(tmp_path)
    assert len(pids) == 2
    process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == (143 if how == signal.SIGTERM else -9)
    assert _gone(pids), "a rank outlived its command"
    if how == signal.SIGTERM:       # one line: not followed by the resource tracker's "leaked semaphore" warning
        assert [line for line in stderr.splitlines() if line.strip()] == ["nnreg: terminated"], stderr


def test_a_killed_rank_is_named_with_its_signal(tmp_path: Path) -> None:
    (tmp_path / "die").write_text("")
    process, pids = _start(tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert "rank 1 was killed by signal 9" in stderr.strip().splitlines()[-1]
    assert _gone(pids)
