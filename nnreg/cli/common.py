"""What every command shares: logging set-up, path flags, and turning user errors into one line + exit code."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, NoReturn

import click

from nnreg.utilities.errors import NnregError
from nnreg.utilities.logging import configure_logging

logger = logging.getLogger("nnreg")


class SpaceSeparated(click.Option):
    """A ``multiple=True`` option that also takes several values after one flag, as nnU-Net's argparse ``nargs='+'``.

    ``-f 0 1 2``, ``-f 0 -f 1 -f 2`` and (where the command splits commas) ``-f 0,1,2`` give the same values: after
    the flag's first value, the following arguments up to the next one starting with ``-`` are taken as further
    values. Use it only on commands without positional arguments (they would be swallowed).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for table in (getattr(parser, "_long_opt", {}), getattr(parser, "_short_opt", {})):
            for parser_option in table.values():
                if parser_option.obj is self and not getattr(parser_option, "_nnreg_greedy", False):
                    _make_greedy(parser_option)


def _make_greedy(parser_option: Any) -> None:
    """Wrap a click parser option's ``process`` so it also consumes the following non-option arguments."""
    single = parser_option.process

    def process(value: Any, state: Any) -> None:
        single(value, state)
        while state.rargs and not str(state.rargs[0]).startswith("-"):
            single(state.rargs.pop(0), state)

    parser_option.process = process
    parser_option._nnreg_greedy = True


def split_values(values: tuple[str, ...] | list[str]) -> list[str]:
    """``("0", "1,2")`` -> ``["0", "1", "2"]``: space-separated, repeated and comma forms of a list option."""
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler, torchrun stopping a group) raised in the main thread: the command
    unwinds as after Ctrl-C, so its worker pools are shut down with it instead of being left running, orphaned."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While a command runs in the main thread, SIGTERM raises :class:`Terminated` (the previous handler after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors_as_one_line(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; a :class:`NnregError` becomes ``nnreg: error: <file>: <problem>`` and exit code 2, an
    operating-system error about a file (a full disk, a read-only folder) ``nnreg: error: <file>: <reason>`` and
    exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        configure_logging(verbose=bool(kwargs.get("verbose", False)))
        try:
            with terminate_as_interrupt():
                return fn(*args, **kwargs)
        except NnregError as exc:
            click.echo(f"nnreg: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Terminated:
            click.echo("nnreg: terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            click.echo("nnreg: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.filename is None:       # not about a file: a defect, shown with its traceback
                raise
            click.echo(f"nnreg: error: {exc.filename}: {exc.strerror or exc}", err=True)   # disk full, permissions
            sys.exit(1)

    return wrapper


def run_and_exit(command: click.Command) -> NoReturn:
    """Console entry point: run ``command`` as click does (its exit code, its one-line errors), flush the output
    streams and end the process with ``os._exit``, without the interpreter's teardown (module, tensor-cache and
    thread-pool clean-up: 0.7-0.9 s after a 1 mm ``nnreg_register``, measured on 2 cores). Safe only for a command
    whose outputs are complete when it returns: written atomically, every writer thread joined, no child process
    left. An exception that is not a user error still ends the normal way, with its traceback."""
    try:
        command.main(standalone_mode=True)
        code: Any = 0
    except SystemExit as exit_:
        code = exit_.code
    if code is None:
        code = 0
    elif not isinstance(code, int):       # sys.exit("message"): Python prints it and exits with 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):     # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def verbose_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")(fn)


def raw_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--raw", "raw", type=click.Path(file_okay=False), default=None,
                        help="Raw datasets folder (overrides $nnReg_raw).")(fn)


def preprocessed_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--preprocessed", "preprocessed", type=click.Path(file_okay=False), default=None,
                        help="Preprocessed folder (overrides $nnReg_preprocessed).")(fn)


def results_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--results", "results", type=click.Path(file_okay=False), default=None,
                        help="Results folder (overrides $nnReg_results).")(fn)
