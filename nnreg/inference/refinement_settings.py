"""The settings of test-time instance optimisation (:mod:`nnreg.inference.instance_optimization`): what the plans'
``instance_optimization`` entry, ``--instance-optimization-settings`` and ``nnreg_register`` choose, validated in one
place, and the multi-modal default. Units: steps are Adam steps, ``lr`` is in velocity voxels of each stage's grid,
factors divide the network grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nnreg.losses.similarity import SIMILARITIES
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.key_values import parse_key_values


# what a pair of two different contrasts refines with, unless a similarity was chosen (nnRegPredictor.settings_for_pair):
# MIND-SSC, whose loss values are about a tenth of local NCC's, so a lighter regulariser, and 24 fine steps with a
# patience of 20 (MIND keeps improving where local NCC has stopped: +0.004 Dice on T1, T2 and FLAIR, twice the time);
# then 40 local NCC steps against the moving image mapped onto the fixed image's contrast (remap_steps: +0.028 Dice
# on T2-like, +0.024 on FLAIR-like pairs), with the 30 coarse steps and the window of 9 they were measured with (1 mm
# plans record 40 and 15 for one contrast since 2026-12-07), and no edge-aware weights (2 mm plans record them for
# one contrast since the nineteenth session; not measured across contrasts). Chosen on training pairs,
# documentation/prediction.md.
MULTIMODAL_REFINEMENT: dict[str, Any] = {"similarity": "mind", "lambda_reg": 0.3, "steps": 30, "fine_steps": 24,
                                         "patience": 20, "remap_steps": 40, "fine_ncc_window": 9, "edge_kappa": 0.0}


@dataclass(frozen=True)
class InstanceOptimization:
    """Settings of the per-pair refinement (``steps = 0``: off). Stored in the plans as ``instance_optimization``."""

    steps: int = 0                 # Adam steps at most on the coarse similarity grid (0 = no refinement at all)
    lr: float = 0.5                # Adam learning rate, velocity in its own voxels
    grid_factor: int = 2           # coarse stage's velocity grid = network grid / grid_factor (rounded up)
    image_factor: int = 2          # coarse similarity grid = network grid / image_factor (1 = the network grid)
    ncc_window: int = 5            # local NCC window on the coarse similarity grid (odd)
    fine_steps: int = 20           # then at most this many steps on the network grid (when image_factor > 1)
    fine_ncc_window: int = 9       # the NCC window of those steps (the training window)
    lambda_reg: float = 1.0        # weight of ||grad v||^2
    integration_steps: int = 5     # scaling-and-squaring steps
    patience: int = 10             # a stage stops when its best loss has not improved by min_delta for this many steps
    min_delta: float = 1e-4        # improvement (absolute loss units) that resets the patience
    velocity_start: str = "network"  # "zero": refined = u_net o exp(v), v from 0; "network": refined = exp(v) with
                                     # v starting from u_net on the velocity grid (the whole transform regularised)
    fine_grid_factor: int = 2      # velocity grid of the fine stage = network grid / this (v resampled onto it)
    max_folding_percent: float = 0.01  # refined fields folding more than this (and more than the network's) are refused
    similarity: str = "lncc"       # "lncc" (local NCC, same contrast) or "mind" (MIND-SSC, any contrasts)
    mind_radius: int = 1           # MIND-SSC patch radius and neighbour dilation (voxels of each stage's grid)
    mind_dilation: int = 2
    warmup_steps: int = 0          # Adam's learning rate ramps up linearly over this many steps after each (re)start
    remap_steps: int = 0           # with similarity "mind": then at most this many local NCC steps against the moving
                                   # image mapped onto the fixed image's contrast (nnreg.inference.intensity_mapping)
    remap_lambda_reg: float = 1.5  # lambda_reg of those steps (local NCC's scale, not MIND's)
    adam_eps: float = 1e-8         # Adam's epsilon: gradients far below it move by less than lr (see optimise)
    edge_kappa: float = 0.0        # > 0: local NCC stages weight ||grad v||^2 down across the fixed image's edges
    edge_floor: float = 0.5        # of about kappa x its intensity range, to this floor (nnreg.losses.edge_weights)

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            (self.steps >= 0, "steps must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (min(self.grid_factor, self.image_factor, self.fine_grid_factor) >= 1,
             "grid_factor, fine_grid_factor and image_factor must be >= 1"),
            (self.ncc_window >= 1 and self.ncc_window % 2 == 1, "ncc_window must be an odd number >= 1"),
            (self.fine_steps >= 0, "fine_steps must be >= 0"),
            (self.fine_ncc_window >= 1 and self.fine_ncc_window % 2 == 1, "fine_ncc_window must be an odd number"),
            (self.lambda_reg >= 0, "lambda_reg must be >= 0"),
            (self.integration_steps >= 0, "integration_steps must be >= 0"),
            (self.patience >= 1 and self.min_delta >= 0, "patience must be >= 1 and min_delta >= 0"),
            (self.velocity_start in ("zero", "network"), "velocity_start must be 'zero' or 'network'"),
            (self.max_folding_percent >= 0, "max_folding_percent must be >= 0"),
            (self.similarity in SIMILARITIES, f"similarity must be one of {', '.join(SIMILARITIES)}"),
            (self.mind_radius >= 0 and self.mind_dilation >= 1, "mind_radius must be >= 0 and mind_dilation >= 1"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.remap_steps >= 0 and self.remap_lambda_reg >= 0, "remap_steps and remap_lambda_reg must be >= 0"),
            (self.adam_eps > 0, "adam_eps must be > 0"),
            (self.edge_kappa >= 0 and 0 < self.edge_floor <= 1, "edge_kappa must be >= 0 and 0 < edge_floor <= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(f"invalid instance_optimization setting: {message}")

    def _check_types(self) -> None:
        """Each value of the declared type (an int for a float is widened; ``60.0`` for an int is refused here, not
        later inside ``range()``)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), f.type if isinstance(f.type, str) else f.type.__name__
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigurationError(f"invalid instance_optimization setting: {f.name} must be an integer, "
                                         f"got {value!r}")
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigurationError(f"invalid instance_optimization setting: {f.name} must be a number, "
                                             f"got {value!r}")
                object.__setattr__(self, f.name, float(value))
            if kind == "str" and not isinstance(value, str):
                raise ConfigurationError(f"invalid instance_optimization setting: {f.name} must be a string, "
                                         f"got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "InstanceOptimization":
        """Settings from a plans entry (unknown keys are an error, missing keys take the defaults)."""
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigurationError(f"unknown instance_optimization key(s): {', '.join(unknown)} "
                                     f"(known: {', '.join(sorted(known))})")
        return cls(**d)

    def with_steps(self, steps: int) -> "InstanceOptimization":
        return replace(self, steps=int(steps))

    def with_overrides(self, overrides: dict[str, Any] | None) -> "InstanceOptimization":
        """These settings with ``overrides`` (keys of this class; unknown keys are an error)."""
        if not overrides:
            return self
        return InstanceOptimization.from_json({**self.to_json(), **overrides})


def parse_overrides(text: str) -> dict[str, Any]:
    """``"grid_factor=2,lambda_reg=0.5"`` -> ``{"grid_factor": 2, "lambda_reg": 0.5}``, each value typed like the
    setting it replaces (the ``--instance-optimization-settings`` syntax); one-line error for anything else."""
    return parse_key_values(text, {f.name: type(f.default) for f in fields(InstanceOptimization)},
                            "instance optimisation")
