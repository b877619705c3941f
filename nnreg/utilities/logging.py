"""Logging set-up for the command-line tools: messages to stderr, optionally a log file."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def configure_logging(verbose: bool = False, log_file: str | Path | None = None) -> None:
    """Route the ``nnreg`` logger to stderr (INFO, or DEBUG when verbose) and optionally to ``log_file``."""
    logger = logging.getLogger("nnreg")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_nnreg_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._nnreg_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(fh)
    logger.propagate = False
