"""Plans files as dataclasses <-> JSON.

A plans file (``<preprocessed>/<Dataset>/<plans_name>.json``) holds dataset-level entries and one entry per
configuration (``3d_fullres``, ``3d_halfres``). A configuration may name another in ``inherits_from`` and
override only some keys; inheritance is resolved when the file is read, so hand edits to either win.
All spatial lists are in array-axis order (i, j, k); spacings in mm; shapes in voxels.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.files import read_json, write_json


#: The refinement that new plans record (the other keys take InstanceOptimization's defaults); the planner adds
#: ``fine_grid_factor`` from the configuration's spacing (nnreg.planning.planner.refinement_settings).
DEFAULT_INSTANCE_OPTIMIZATION: dict[str, Any] = {"steps": 30, "fine_steps": 10, "grid_factor": 2, "lambda_reg": 1.5,
                                                 "integration_steps": 3, "warmup_steps": 3}

#: A network grid coarser than the images by at least this factor along an axis is followed by a finer-grid stage
#: on the images' own spacing (nnreg.inference.finer_grid).
MIN_FINER_RATIO = 1.5


def subdivisions(factor: Sequence[float]) -> tuple[int, ...]:
    """Finer voxels per network voxel along each axis of resampling factor ``f`` (network / original spacing):
    ``round(f)`` where ``f`` is at least :data:`MIN_FINER_RATIO`, else 1."""
    return tuple(int(round(f)) if f >= MIN_FINER_RATIO else 1 for f in factor)


def finer_stage_follows(factor: Sequence[float]) -> bool:
    """Whether the predictor's finer-grid stage runs after a refinement on a grid of this resampling factor: some
    axis is subdivided. The one rule of the planner (what a configuration records) and the predictor."""
    return max(subdivisions(factor)) > 1


#: What new plans record on top of DEFAULT_INSTANCE_OPTIMIZATION for a configuration that a finer-grid stage follows
#: on a network grid of about 2 mm (``3d_halfres`` of 1 mm data; nnreg.planning.planner.refinement_settings): more
#: steps on the network grid and a wider window in its fine stage. Chosen on
#: OpenBrains160 training pairs (+0.003 Dice on 8 of 8, -0.10 voxels landmark error on 7 of 8; seventeenth session,
#: documentation/prediction.md); such a pair's budget is 20 s where a 2 mm pair's is 6 s, so 2 mm grids of 2 mm data
#: keep the defaults.
FINER_STAGE_INSTANCE_OPTIMIZATION: dict[str, Any] = {"steps": 40, "fine_steps": 14, "fine_ncc_window": 15}

#: What new plans record on top of DEFAULT_INSTANCE_OPTIMIZATION for a network grid of about 2 mm that no finer-grid
#: stage follows (2 mm data): the fine window of 15 with the edge-aware regulariser. Chosen on all 56 ordered
#: OpenBrains80 training pairs (window 15 alone: -0.043 voxels landmark error, -0.0009 Dice; with the edge weights
#: -0.038 and +0.0022 Dice); held out: Dice 0.7359, HD95 2.26, TRE 0.896 against 0.7344, 2.25, 0.916 (nineteenth
#: session, documentation/prediction.md). Not measured on 1 mm grids, which keep the defaults; the edge weights lost
#: Dice on the 2 mm grid of 1 mm data (3d_halfres), which keeps FINER_STAGE_INSTANCE_OPTIMIZATION.
NATIVE_2MM_INSTANCE_OPTIMIZATION: dict[str, Any] = {"fine_ncc_window": 15, "edge_kappa": 0.1}


@dataclass
class ConfigurationPlan:
    """Everything the trainer and predictor need to know about one configuration."""

    data_identifier: str
    spacing: list[float]                 # target spacing (mm) of the network grid
    resampling_factor: list[float]       # target spacing / original spacing, per axis
    resampled_shape: list[int]           # original image resampled to ``spacing``
    crop_start: list[int]                # first voxel of the network box in the resampled grid (may be < 0)
    shape: list[int]                     # network input shape (box size), divisible by the network's divisor
    normalization: dict[str, Any]        # {"scheme": "fixed_range"|"percentile", ...}
    batch_size: int
    architecture: dict[str, Any]         # {"network_class": str, "kwargs": {...}}
    inherits_from: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # test-time refinement read by the predictor (keys of nnreg.inference.refinement_settings.InstanceOptimization;
    # None = not recorded = off); new plans record DEFAULT_INSTANCE_OPTIMIZATION
    instance_optimization: dict[str, Any] | None = None
    # symmetric, inverse-consistent training read by the trainer (nnreg.training.symmetric; None = off)
    symmetric_training: dict[str, Any] | None = None
    # random new contrasts while training (nnreg.training.data.augmentation.ContrastRandomizer), read by the trainer
    # unless nnreg_train --(no-)contrast-augmentation says otherwise; the planner's rule: nnreg.planning.contrast.
    # Absent (plans written before the planner chose it) = off
    contrast_augmentation: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plans:
    """A whole plans file."""

    dataset_name: str
    plans_name: str
    original_median_spacing: list[float]
    original_median_shape: list[float]
    configurations: dict[str, ConfigurationPlan]
    planner: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise ConfigurationError(
                f"plans {self.plans_name} have no configuration {name!r} (available: "
                f"{', '.join(sorted(self.configurations))})")
        return self.configurations[name]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["configurations"] = {k: v.to_json() for k, v in self.configurations.items()}
        return d

    def save(self, path: str | Path) -> None:
        write_json(self.to_json(), path)

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str | Path | None = None) -> "Plans":
        try:
            raw_configs = d["configurations"]
            resolved = {name: _resolve(name, raw_configs, source) for name in raw_configs}
            configs = {name: ConfigurationPlan(**cfg) for name, cfg in resolved.items()}
            for name, cfg in configs.items():
                if not isinstance(cfg.contrast_augmentation, bool):
                    raise ConfigurationError(f"configuration {name!r}: contrast_augmentation must be true or false, "
                                             f"got {cfg.contrast_augmentation!r}", source)
            return cls(
                dataset_name=d["dataset_name"],
                plans_name=d["plans_name"],
                original_median_spacing=d["original_median_spacing"],
                original_median_shape=d["original_median_shape"],
                configurations=configs,
                planner=d.get("planner", {}),
                version=d.get("version", 1),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(f"not a valid plans file ({exc})", source) from None

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        return cls.from_json(read_json(path), source=path)


def _resolve(name: str, raw: dict[str, Any], source: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A configuration with its ``inherits_from`` chain merged in (child keys win, dicts merge deeply)."""
    if name in seen:
        raise ConfigurationError(f"configuration {name!r} inherits from itself via {' -> '.join(seen)}", source)
    if name not in raw:
        raise ConfigurationError(f"configuration {seen[-1]!r} inherits from unknown {name!r}", source)
    cfg = raw[name]
    parent = cfg.get("inherits_from")
    if not parent:
        return copy.deepcopy(cfg)
    merged = _deep_merge(_resolve(parent, raw, source, seen + (name,)), cfg)
    merged["inherits_from"] = parent
    return merged


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
