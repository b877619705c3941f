"""Checkpoints: one ``torch.save`` dict, written atomically, read back with a one-line error when unusable.

Format (the predictor reads ``network_weights``, ``trainer_name`` and ``init_args``)::

    {"format_version": 1, "network_weights": state_dict (no DDP/compile prefixes), "optimizer_state",
     "grad_scaler_state" (or None), "current_epoch", "logging": {...}, "best_metric", "trainer_name",
     "init_args": {"dataset_name", "plans_name", "configuration", "fold", "hyperparameters"},
     "rng_state": {"torch", "numpy", "python", "cuda", "sampler_position"},
     "plans_configuration": the resolved plans entry of the configuration it was trained with,
     "architecture": {"network_class", "kwargs"} of the network whose weights it holds}

The last two make a checkpoint self-describing: after re-planning a model folder, the predictor still builds each
fold's own network and preprocessing from its checkpoint (:func:`plans_entries`); checkpoints of older nnreg
versions lack them and fall back to the model folder's ``plans.json``.

Everything in it is a tensor, number, string, list, dict or None (:func:`save_checkpoint` converts numpy numbers,
arrays and paths and refuses anything else), so ``torch.load(weights_only=True)`` reads it; nnreg never reads a
checkpoint any other way (:mod:`nnreg.utilities.safe_load`).
The file is written under a temporary name and renamed, so a process killed at any moment leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import copy
import random
from collections import OrderedDict
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import atomic_path
from nnreg.utilities.safe_load import UnreadableCheckpointError, load_tensors_only

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "network_weights", "optimizer_state", "current_epoch", "logging", "init_args",
                 "trainer_name")


class CheckpointError(NnregError):
    """A checkpoint is missing, truncated, corrupt or from an incompatible version."""


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes; tensors moved to the CPU."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value.detach().cpu()
    return out


def plans_entries(configuration: Any) -> dict[str, Any]:
    """``{"plans_configuration", "architecture"}`` of a :class:`ConfigurationPlan`, as JSON-able copies."""
    entry = copy.deepcopy(configuration.to_json())
    return {"plans_configuration": entry, "architecture": copy.deepcopy(entry["architecture"])}


def capture_rng_state(sampler_position: int) -> dict[str, Any]:
    """All random generators of this process plus the data pipeline position, in torch-loadable types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "sampler_position": int(sampler_position),
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (the sampler position is restored by the trainer)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_data(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with numpy numbers made Python numbers, numpy arrays tensors and paths strings, so that
    ``torch.load(weights_only=True)`` reads it back; any other object is a programming error (``TypeError`` naming
    where it sits), caught here rather than by a reader that would refuse the checkpoint."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return value
    if isinstance(value, np.generic) and (value.dtype.kind in "biuf"):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value))
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        items = ((plain_data(k, where), plain_data(v, f"{where}.{k}")) for k, v in value.items())
        out = OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
        if hasattr(value, "_metadata"):   # state_dict versions, read by load_state_dict
            out._metadata = plain_data(value._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
        return out
    if isinstance(value, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where} holds a {type(value).__name__}, which a weights_only reader refuses; store plain "
                    f"values or tensors")


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically, as plain data and tensors only (:func:`plain_data`)."""
    checkpoint = plain_data({"format_version": FORMAT_VERSION, **checkpoint})
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint on the CPU; :class:`CheckpointError` (one line) when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        checkpoint = load_tensors_only(path)   # a file holding other Python objects is refused, never unpickled
    except UnreadableCheckpointError as exc:
        raise CheckpointError(f"checkpoint is corrupt or incomplete ({exc.reason}); delete it to continue from "
                              f"another checkpoint or start again without --c", path) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError("not an nnreg checkpoint (no dict inside)", path)
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"not a complete nnreg training checkpoint (missing {', '.join(missing)})", path)
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {checkpoint['format_version']} is not supported (expects "
                              f"{FORMAT_VERSION})", path)
    return checkpoint
