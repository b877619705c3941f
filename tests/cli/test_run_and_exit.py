"""``nnreg_register``'s console entry (:func:`nnreg.cli.common.run_and_exit`): the process ends with ``os._exit`` once
the command has returned, so the interpreter's teardown (atexit handlers, module clean-up) is skipped, while the exit
code, the one-line error and everything printed still reach the caller. Each case runs the entry in a fresh
interpreter, as the console script does."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nnreg

REPO = Path(nnreg.__file__).resolve().parent.parent

# an atexit handler stands for the teardown: it runs after a normal exit and never after os._exit
SCRIPT = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("TEARDOWN RAN", flush=True))
    sys.argv = ["nnreg_register", *sys.argv[1:]]
    from nnreg.cli.register import entry
    entry()
""")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_help_is_printed_and_the_teardown_is_skipped() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: nnreg_register" in result.stdout and "--fixed" in result.stdout    # flushed into a pipe
    assert "TEARDOWN RAN" not in result.stdout


def test_a_user_error_keeps_its_one_line_and_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "nope.nii.gz"
    result = _run("--fixed", str(missing), "--moving", str(missing), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"nnreg: error: {missing}: file not found"]
    assert "TEARDOWN RAN" not in result.stdout
    assert not (tmp_path / "out").exists()


def test_a_usage_error_keeps_clicks_exit_code() -> None:
    result = _run("--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr


@pytest.mark.parametrize("code, expected", [(None, 0), (3, 3), ("bye", 1)])
def test_exit_codes_are_those_of_sys_exit(code: object, expected: int) -> None:
    script = textwrap.dedent(f"""
        import sys, click
        from nnreg.cli.common import run_and_exit

        @click.command()
        def command():
            print("output", end="")
            sys.exit({code!r})

        sys.argv = ["command"]
        run_and_exit(command)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == expected
    assert result.stdout == "output"          # unflushed output is flushed before os._exit
    assert ("bye" in result.stderr) == (code == "bye")
