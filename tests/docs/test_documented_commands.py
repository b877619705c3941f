"""Every command shown in README.md and documentation/ must still be valid, so the docs cannot rot.

``nnreg_*`` commands are parsed by the real click commands: unknown options, wrong option types and invalid
choices fail here (paths are not required to exist). ``python benchmarks/X.py`` lines must name an existing
script whose ``--help`` lists every flag used. The pipeline itself is run end to end by
tests/test_end_to_end.py with the same commands on a tiny dataset.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "documentation").glob("*.md"))]
COMMANDS = {
    "nnreg_plan_and_preprocess": "nnreg.cli.plan_and_preprocess",
    "nnreg_train": "nnreg.cli.train",
    "nnreg_predict": "nnreg.cli.predict",
    "nnreg_evaluate": "nnreg.cli.evaluate",
    "nnreg_example": "nnreg.cli.example",
    "nnreg_apply": "nnreg.cli.apply",
    "nnreg_export_model_to_zip": "nnreg.cli.export_model",
    "nnreg_install_pretrained_model_from_zip": "nnreg.cli.install_model",
    "nnreg_register": "nnreg.cli.register",
}
_FENCE = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
_SIMPLE_TYPES = (click.types.IntParamType, click.types.FloatParamType, click.Choice, click.types.BoolParamType)


def _shell_segments(path: Path) -> list[tuple[str, str]]:
    """(where, command) for each command of each shell block (continuations joined, && and | split)."""
    out = []
    for block in _FENCE.findall(path.read_text()):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for segment in re.split(r"&&|\|\||\||;", line):
                segment = segment.strip()
                if segment:
                    out.append((f"{path.name}: {line}", segment))
    return out


NNREG_LINES = [(w, s) for doc in DOCS for w, s in _shell_segments(doc) if s.split()[0] in COMMANDS]
BENCH_LINES = [(w, s) for doc in DOCS for w, s in _shell_segments(doc) if re.match(r"python3? benchmarks/", s)]


def test_the_docs_show_the_main_commands() -> None:
    shown = {s.split()[0] for _, s in NNREG_LINES}
    assert shown == set(COMMANDS), f"commands never shown in the docs: {set(COMMANDS) - shown}"


@pytest.mark.parametrize("where, segment", NNREG_LINES, ids=[s[:60] for _, s in NNREG_LINES])
def test_documented_nnreg_command_parses(where: str, segment: str) -> None:
    import importlib

    argv = shlex.split(segment)
    command = importlib.import_module(COMMANDS[argv[0]]).main
    ctx = click.Context(command, info_name=argv[0])
    parser = command.make_parser(ctx)
    try:
        opts, args, order = parser.parse_args(argv[1:])
    except click.UsageError as exc:
        pytest.fail(f"{where}\n  -> {exc}")
    for param in order:
        value = opts.get(param.name)
        if isinstance(param, click.Option) and isinstance(param.type, _SIMPLE_TYPES) and value is not None \
                and not param.is_flag:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                try:
                    param.type.convert(v, param, ctx)
                except click.BadParameter as exc:
                    pytest.fail(f"{where}\n  -> {param.name}: {exc}")
    n_positional = len([p for p in command.params if isinstance(p, click.Argument)])
    assert len(args) <= n_positional, f"{where}: unexpected arguments {args[n_positional:]}"


@pytest.mark.parametrize("where, segment", BENCH_LINES, ids=[s[:60] for _, s in BENCH_LINES])
def test_documented_benchmark_exists_and_knows_its_flags(where: str, segment: str) -> None:
    argv = shlex.split(segment)
    script = ROOT / argv[1]
    assert script.is_file(), f"{where}: no {argv[1]}"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=300).stdout
    for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
        assert flag in help_text, f"{where}: {argv[1]} --help does not mention {flag}"
