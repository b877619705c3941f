"""The three folders of the pipeline, resolved lazily: an unset one is an error only when a stage needs it.

``nnReg_raw`` holds datasets (``DatasetXXX_Name/``), ``nnReg_preprocessed`` the fingerprints, plans and
preprocessed arrays, ``nnReg_results`` the trained models. Every CLI has a flag that overrides the variable.
"""
from __future__ import annotations

import os
from pathlib import Path

from nnreg.utilities.errors import ConfigurationError

ENV_RAW = "nnReg_raw"
ENV_PREPROCESSED = "nnReg_preprocessed"
ENV_RESULTS = "nnReg_results"

_FLAGS = {ENV_RAW: "--raw", ENV_PREPROCESSED: "--preprocessed", ENV_RESULTS: "--results"}


def resolve_folder(variable: str, override: str | Path | None = None, must_exist: bool = False) -> Path:
    """Return the folder given by ``override`` or else by the environment ``variable``.

    Raises one clear :class:`ConfigurationError` naming the variable and the flag to set when neither is given.
    """
    value = str(override) if override is not None else os.environ.get(variable)
    if not value:
        raise ConfigurationError(
            f"the folder {variable} is not set: export {variable}=/path/to/folder or pass {_FLAGS[variable]} PATH"
        )
    path = Path(value).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise ConfigurationError(f"{variable} points to a folder that does not exist", path)
    return path


def raw_folder(override: str | Path | None = None) -> Path:
    """Where datasets live (``$nnReg_raw``)."""
    return resolve_folder(ENV_RAW, override, must_exist=True)


def preprocessed_folder(override: str | Path | None = None) -> Path:
    """Where fingerprints, plans and preprocessed data go (``$nnReg_preprocessed``)."""
    return resolve_folder(ENV_PREPROCESSED, override)


def results_folder(override: str | Path | None = None) -> Path:
    """Where trained models go (``$nnReg_results``)."""
    return resolve_folder(ENV_RESULTS, override)
