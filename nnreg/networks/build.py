"""``build_network``: the one entry the planner, trainer and predictor use to turn a plans entry into a model.

``architecture = {"network_class": "CascadeRegNet" | "VoxelMorph" | "package.module.Class", "kwargs": {...}}``;
the kwargs are JSON values, so a trained model is always rebuildable from its plans file.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Mapping

import torch.nn as nn

from nnreg.networks.cascade import CascadeRegNet
from nnreg.networks.voxelmorph import VoxelMorph
from nnreg.utilities.errors import ConfigurationError

logger = logging.getLogger(__name__)

NETWORK_CLASSES: dict[str, type[nn.Module]] = {"CascadeRegNet": CascadeRegNet, "VoxelMorph": VoxelMorph}


def resolve_network_class(name: str) -> type[nn.Module]:
    """A registered class name or a dotted import path ``package.module.Class``."""
    if name in NETWORK_CLASSES:
        return NETWORK_CLASSES[name]
    module_name, _, class_name = name.rpartition(".")
    if not module_name:
        raise ConfigurationError(f"unknown network_class {name!r}; known: {sorted(NETWORK_CLASSES)} or a dotted path")
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
    logger.debug("built %s with %s", architecture["network_class"], kwargs)
    return model
