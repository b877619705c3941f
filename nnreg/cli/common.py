"""What every command shares: logging set-up, path flags, and turning user errors into one line + exit code."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from nnreg.utilities.errors import NnregError
from nnreg.utilities.logging import configure_logging

logger = logging.getLogger("nnreg")


def user_errors_as_one_line(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; a :class:`NnregError` becomes ``nnreg: error: <file>: <problem>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        configure_logging(verbose=bool(kwargs.get("verbose", False)))
        try:
            return fn(*args, **kwargs)
        except NnregError as exc:
            click.echo(f"nnreg: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("nnreg: interrupted", err=True)
            sys.exit(130)

    return wrapper


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
