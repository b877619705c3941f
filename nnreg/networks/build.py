"""``build_network``: the one entry the planner, trainer and predictor use to turn a plans entry into a model.

``architecture = {"network_class": "CascadeRegNet" | "VoxelMorph" | "package.module.Class", "kwargs": {...}}``;
the kwargs are JSON values, so a trained model is always rebuildable from its plans file.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Mapping

import torch.nn as nn

from nnreg.networks.cascade import CascadeRegNet
from nnreg.networks.voxelmorph import VoxelMorph
from nnreg.utilities.errors import ConfigurationError

logger = logging.getLogger(__name__)

NETWORK_CLASSES: dict[str, type[nn.Module]] = {"CascadeRegNet": CascadeRegNet, "VoxelMorph": VoxelMorph}
# comma-separated dotted network classes outside nnreg that may be imported (resolve_network_class)
TRUSTED_NETWORKS_ENV = "nnReg_trusted_networks"


def trusted_network_paths() -> set[str]:
    """The dotted network classes outside nnreg that the user allows to be imported (:data:`TRUSTED_NETWORKS_ENV`,
    comma-separated ``package.module.Class`` names)."""
    return {part.strip() for part in os.environ.get(TRUSTED_NETWORKS_ENV, "").split(",") if part.strip()}


def resolve_network_class(name: str) -> type[nn.Module]:
    """A registered class name or a dotted import path ``package.module.Class``.

    Importing a module runs its code, and plans and checkpoints travel with shared models: a dotted path outside
    nnreg's own package is imported only when the user names it in :data:`TRUSTED_NETWORKS_ENV`; any other is a
    one-line error that says how to allow it, and nothing is imported."""
    if name in NETWORK_CLASSES:
        return NETWORK_CLASSES[name]
    module_name, _, class_name = name.rpartition(".")
    if not module_name:
        raise ConfigurationError(f"unknown network_class {name!r}; known: {sorted(NETWORK_CLASSES)} or a dotted path")
    if module_name.split(".")[0] != "nnreg" and name not in trusted_network_paths():
        raise ConfigurationError(f"network_class {name!r} is not one of nnreg's ({', '.join(sorted(NETWORK_CLASSES))})"
                                 f" and importing it would run that module's code; if you trust this model, allow it "
                                 f"with {TRUSTED_NETWORKS_ENV}={name}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import network_class {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigurationError(f"network_class {name!r} is not a torch.nn.Module subclass")
    return cls


def build_network(architecture: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``architecture["network_class"](**architecture["kwargs"])``."""
    if "network_class" not in architecture:
        raise ConfigurationError(f"architecture has no 'network_class': {dict(architecture)}")
    cls = resolve_network_class(str(architecture["network_class"]))
    kwargs = dict(architecture.get("kwargs") or {})
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"bad kwargs for {architecture['network_class']}: {exc}") from exc
    except (RuntimeError, MemoryError) as exc:     # e.g. a width that no memory holds: the allocator's message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigurationError(f"cannot build {architecture['network_class']} with {kwargs}: {first}") from None
    logger.debug("built %s with %s", architecture["network_class"], kwargs)
    return model
