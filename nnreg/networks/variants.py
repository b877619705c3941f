"""Named architectures: the paper's default backbone, its Table 2 variants, and cheaper CPU variants.

Every entry is a plans ``architecture`` dict for :func:`nnreg.networks.build_network`.
"""
from __future__ import annotations

import copy
from typing import Any

DEFAULT_LEVELS = 5


def default_architecture(n_levels: int = DEFAULT_LEVELS, **overrides: Any) -> dict[str, Any]:
    """The paper's backbone (sc 32, plain 3³ kernels, compose cascade, 7 integration steps, no CA/BF)."""
    kwargs: dict[str, Any] = {
        "n_levels": int(n_levels),
        "base_channels": 32,
        "flow_channels": 64,
        "flow_mid_channels": 27,
        "kernel_size": 3,
        "cascade": "compose",
        "integration_steps": 7,
        "co_attention": False,
        "co_attention_levels": None,
        "bilateral_filter": False,
        "bilateral_levels": "last",
        "bilateral_kernel_size": 5,
        "skip_levels": 0,
        "bilateral_on": "field",
        "large_kernel_identity": False,
    }
    unknown = set(overrides) - set(kwargs)
    if unknown:
        raise KeyError(f"unknown CascadeRegNet kwargs: {sorted(unknown)}")
    kwargs.update(overrides)
    if "base_channels" in overrides and "flow_channels" not in overrides:
        kwargs["flow_channels"] = 2 * kwargs["base_channels"]
    return {"network_class": "CascadeRegNet", "kwargs": kwargs}


def voxelmorph_architecture() -> dict[str, Any]:
    """The LUMIR VoxelMorph baseline."""
    return {
        "network_class": "VoxelMorph",
        "kwargs": {
            "encoder_channels": [16, 32, 32, 32],
            "decoder_channels": [32, 32, 32, 32, 32, 16, 16],
            "negative_slope": 0.2,
            "integration_steps": 0,
        },
    }


_PAPER_OVERRIDES: dict[str, dict[str, Any]] = {
    "backbone": {},
    "backbone+BF": {"bilateral_filter": True},
    "backbone+CA": {"co_attention": True},
    "backbone+CA+BF": {"co_attention": True, "bilateral_filter": True},
    "backbone+LK": {"base_channels": 36, "kernel_size": 5},
    "backbone+LC-1": {"base_channels": 64, "cascade": "add"},
    "backbone+LC-2": {"base_channels": 64, "cascade": "compose"},
}

# Cheaper than the paper: narrower widths and/or the finest level skipped (network at half resolution, field
# upsampled). Their accuracy cost is to be measured by training them; their compute cost is in network_cost.
_CPU_OVERRIDES: dict[str, dict[str, Any]] = {
    "backbone-half": {"skip_levels": 1},
    "backbone-sc16": {"base_channels": 16},
    "backbone-sc16-half": {"base_channels": 16, "skip_levels": 1},
    "backbone-sc64-half": {"base_channels": 64, "skip_levels": 1},
}


def paper_variants(n_levels: int = DEFAULT_LEVELS) -> dict[str, dict[str, Any]]:
    """Table 2 of the seed paper as architecture dicts (LC-1 = additive cascade, LC-2 = composition)."""
    return {name: default_architecture(n_levels, **o) for name, o in _PAPER_OVERRIDES.items()}


def cpu_variants(n_levels: int = DEFAULT_LEVELS) -> dict[str, dict[str, Any]]:
    """Cheaper variants for CPU inference, for the planner to choose from."""
    return {name: default_architecture(n_levels, **o) for name, o in _CPU_OVERRIDES.items()}


PAPER_VARIANTS: dict[str, dict[str, Any]] = paper_variants()
CPU_VARIANTS: dict[str, dict[str, Any]] = cpu_variants()


def named_architecture(name: str, n_levels: int = DEFAULT_LEVELS) -> dict[str, Any]:
    """Any named variant ("backbone", "backbone+LK", "backbone-half", "VoxelMorph", ...) as a fresh dict."""
    if name == "VoxelMorph":
        return voxelmorph_architecture()
    table = {**paper_variants(n_levels), **cpu_variants(n_levels)}
    if name not in table:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(table) + ['VoxelMorph']}")
    return copy.deepcopy(table[name])
