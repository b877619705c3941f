"""nnU-Net habits: space-separated lists (-f 0 1 2, -d 500 501) next to the repeated and comma forms, and the
progress-bar switch."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from nnreg.cli.common import SpaceSeparated, split_values
from nnreg.utilities.progress_bars import DISABLE_ENV, progress_bar_disabled


@click.command()
@click.option("-f", "--folds", cls=SpaceSeparated)
@click.option("-o", "--output")
@click.option("--flag", is_flag=True)
def _command(folds: tuple[str, ...], output: str | None, flag: bool) -> None:
    click.echo(f"{split_values(folds)}|{output}|{flag}")


@pytest.mark.parametrize("args", [["-f", "0", "1", "2"], ["-f", "0", "-f", "1", "-f", "2"], ["-f", "0,1,2"],
                                  ["-f", "0", "1,2"], ["--folds", "0", "1", "2"], ["-f0", "1", "2"]])
def test_space_repeated_and_comma_forms_agree(args: list[str]) -> None:
    result = CliRunner().invoke(_command, [*args, "-o", "x", "--flag"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "['0', '1', '2']|x|True"


def test_values_stop_at_the_next_option() -> None:
    assert CliRunner().invoke(_command, ["-o", "y", "-f", "all", "--flag"]).output.strip() == "['all']|y|True"
    assert CliRunner().invoke(_command, []).output.strip() == "[]|None|False"


def test_the_real_commands_take_space_separated_lists() -> None:
    from nnreg.cli.evaluate import main as evaluate
    from nnreg.cli.plan_and_preprocess import main as plan
    from nnreg.cli.predict import main as predict

    for command, argv, name, expected in (
            (plan, ["-d", "500", "501", "-c", "3d_fullres", "3d_halfres", "--no-pp"], "datasets", ["500", "501"]),
            (plan, ["-d", "500", "-d", "501"], "datasets", ["500", "501"]),
            (predict, ["-o", "out", "-f", "0", "1", "2", "-d", "500"], "folds", ["0", "1", "2"]),
            (evaluate, ["-i", "x", "-d", "500", "-c", "a.json", "b.json"], "configs", ["a.json", "b.json"])):
        ctx = command.make_context(command.name or "cmd", list(argv), resilient_parsing=True)
        assert [str(v) for v in ctx.params[name]] == expected, (argv, ctx.params[name])


def test_progress_bars_off_by_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    assert progress_bar_disabled() is None            # tqdm: a bar only on a terminal
    assert progress_bar_disabled(True) is True
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert progress_bar_disabled() is True
    monkeypatch.setenv(DISABLE_ENV, "0")
    assert progress_bar_disabled() is None
