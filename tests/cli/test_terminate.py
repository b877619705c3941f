"""SIGTERM (``kill``, a scheduler) unwinds a command as Ctrl-C does: one line, exit code 143, and its worker
processes end with it instead of being left running."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from nnreg.utilities.files import process_alive

SCRIPT = '''
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import click

from nnreg.cli.common import user_errors_as_one_line


@click.command()
@user_errors_as_one_line
def main() -> None:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)


if __name__ == "__main__":
    main()
'''


def test_sigterm_is_one_line_and_stops_the_workers(tmp_path: Path) -> None:
    script = tmp_path / "command.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "nnreg: terminated" and "Traceback" not in done.stderr
    worker = int(done.stdout.split()[0])
    for _ in range(100):               # the pool was shut down before the command returned; allow the reaping
        if not process_alive(worker):
            break
        time.sleep(0.05)
    assert not process_alive(worker)


def test_an_os_error_about_a_file_is_one_line_and_others_keep_their_traceback() -> None:
    """A full disk or a read-only folder: ``nnreg: error: <file>: <reason>``, exit code 1; an OSError that names no
    file is a defect and keeps its traceback."""
    import errno

    import click
    from click.testing import CliRunner

    from nnreg.cli.common import user_errors_as_one_line

    @click.command()
    @click.option("--named", is_flag=True)
    @user_errors_as_one_line
    def command(named: bool) -> None:
        if named:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out/field.nii.gz")
        raise OSError(errno.EIO, "Input/output error")

    result = CliRunner().invoke(command, ["--named"])
    assert result.exit_code == 1
    assert result.output.strip() == "nnreg: error: /data/out/field.nii.gz: No space left on device"
    result = CliRunner().invoke(command, [])
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EIO
