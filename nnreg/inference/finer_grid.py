"""A last refinement stage on a grid finer than the one the refinement ran on (e.g. the image's own 1 mm grid after a
2 mm working grid), with the velocity kept on its coarse grid.

Conventions (those of :mod:`nnreg.spatial` and :mod:`nnreg.inference.instance_optimization`): tensors
``(B, C, H, W, D)`` in array-axis order; the velocity ``v`` is in voxel units of its own grid and the transform is
``exp(v)`` (scaling and squaring on that grid), resized to the finer grid (:func:`nnreg.spatial.resize_field`, grids
sharing their extent with voxel centres at ``(i + 0.5) * spacing``); fields are voxel-unit **pull** fields of the
finer grid, ``warped(x) = moving(x + u(x))``.

Why: a refinement whose similarity is measured on a 2 mm grid cannot see what a 1 mm label boundary needs, and a
whole refinement at 1 mm costs ~2 s a step on 2 CPU cores. Keeping ``v`` on the coarse grid (the same parameters, the
same regulariser) and measuring the similarity at full resolution for a few steps, with a smaller learning rate
(Adam restarts, so its first step moves every component by about ``lr``), adds the detail at a few steps' cost. The
stage returns its best iterate and is refused, like the refinement, when it is not finite or folds
(:func:`nnreg.inference.refusal.refusal`).

Two parametrisations (``FinerGridSettings.parametrisation``):

- ``"velocity"``: the transform stays ``exp(v)``; ``v`` on its coarse grid (a few steps add what a coarse velocity
  can express) or, with ``finer_velocity``, resampled onto the finer grid (1 mm detail, but scaling and squaring at
  1 mm costs ~2.5x a step).
- ``"displacement"``: ``exp(v)`` is fixed and a displacement correction ``w`` on the finer grid is optimised, the
  whole field being ``exp(v) ∘ (id + w)``: ``u(x) = w(x) + u_v(x + w(x))`` (:func:`nnreg.spatial.compose`). The
  moving image is warped by ``exp(v)`` once and each step warps that image by ``w`` (one 1 mm warp a step, as the
  coarse velocity costs), with ``λ·||∇w||²`` regularising the correction only. Why: it moves 1 mm detail at the
  cost of a coarse-velocity step; ``w`` is not diffeomorphic by construction, so the regulariser is stronger and
  the fold check of :func:`refusal` guards every pair (measured on OpenBrains160 training pairs,
  documentation/prediction.md).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from nnreg.inference.instance_optimization import (InstanceOptimization, OptimisationTrace, RefinementReport, Stage,
                                                   deterministic_mode, exponential_field, optimise)
from nnreg.inference.masks import SimilarityMasks
from nnreg.inference.refusal import folding_percent, refusal
from nnreg.planning.plans import subdivisions
from nnreg.preprocessing.grid import GridMapping
from nnreg.spatial import compose, resize_field, warp
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.key_values import parse_key_values

logger = logging.getLogger(__name__)


PARAMETRISATIONS = ("velocity", "displacement")


@dataclass(frozen=True)
class FinerGridSettings:
    """The finer-grid stage (``steps = 0``: off). The defaults are ``nnreg_predict``'s: a 1 mm displacement
    correction, 8 steps at lr 0.15 with λ 8 and the edge-aware regulariser at κ 0.1 (chosen on OpenBrains160
    training pairs, documentation/prediction.md; the stage before 2026-12-06 was ``parametrisation="velocity",
    lr=0.25, lambda_reg=None``, and until 2026-12-07 it took the refinement's ``edge_kappa``, 0 in 1 mm plans)."""

    steps: int = 8
    lr: float = 0.15             # Adam learning rate (voxels of the parameter's grid)
    ncc_window: int = 9          # local NCC window on the finer grid (odd)
    finer_velocity: bool = False  # resample the velocity onto the finer grid too (more detail, integration costs more)
    lambda_reg: float | None = 8.0  # weight of ||grad v||^2 or ||grad w||^2 in this stage (None: the refinement's)
    integration_steps: int | None = None  # scaling-and-squaring steps in this stage (None: the refinement's)
    warmup_steps: int | None = None  # Adam's learning-rate warm-up in this stage (None: the refinement's)
    parametrisation: str = "displacement"  # "velocity": exp(v) goes on; "displacement": exp(v) o (id + w), w optimised
    adam_eps: float | None = None  # Adam's epsilon in this stage (None: the refinement's)
    edge_kappa: float | None = 0.1   # the edge-aware regulariser's kappa in this stage (None: the refinement's)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigurationError(f"invalid finer-grid setting: steps must be an integer >= 0, got {self.steps!r}")
        if not self.lr > 0:
            raise ConfigurationError(f"invalid finer-grid setting: lr must be > 0, got {self.lr!r}")
        if self.lambda_reg is not None and not self.lambda_reg >= 0:
            raise ConfigurationError(f"invalid finer-grid setting: lambda_reg must be >= 0, got {self.lambda_reg!r}")
        if self.adam_eps is not None and not self.adam_eps > 0:
            raise ConfigurationError(f"invalid finer-grid setting: adam_eps must be > 0, got {self.adam_eps!r}")
        if self.edge_kappa is not None and not self.edge_kappa >= 0:
            raise ConfigurationError(f"invalid finer-grid setting: edge_kappa must be >= 0, got {self.edge_kappa!r}")
        for name in ("integration_steps", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigurationError(f"invalid finer-grid setting: {name} must be an integer >= 0, got {value!r}")
        if self.parametrisation not in PARAMETRISATIONS:
            raise ConfigurationError(f"invalid finer-grid setting: parametrisation must be one of "
                                     f"{', '.join(PARAMETRISATIONS)}, got {self.parametrisation!r}")
        if self.parametrisation == "displacement" and self.finer_velocity:
            raise ConfigurationError("invalid finer-grid setting: finer_velocity applies to the velocity "
                                     "parametrisation only")
        if self.ncc_window < 1 or self.ncc_window % 2 == 0:
            raise ConfigurationError(f"invalid finer-grid setting: ncc_window must be an odd number >= 1, "
                                     f"got {self.ncc_window!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "FinerGridSettings":
        """Settings from a plans entry or overrides (unknown keys are an error, missing keys take the defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d or {}) - known)
        if unknown:
            raise ConfigurationError(f"unknown finer-grid key(s): {', '.join(unknown)} "
                                     f"(known: {', '.join(sorted(known))})")
        return cls(**(d or {}))

    def with_overrides(self, overrides: dict[str, Any] | None) -> "FinerGridSettings":
        return FinerGridSettings.from_json({**self.to_json(), **(overrides or {})}) if overrides else self

    def velocity_integration_steps(self, refinement: InstanceOptimization) -> int:
        """The scaling-and-squaring steps whose ``exp`` of the report's velocity is the stage's coarse transform:
        this stage's (velocity parametrisation), or the refinement's, whose velocity a displacement correction keeps
        (``exp(v) ∘ (id + w)``)."""
        if self.parametrisation == "displacement":
            return refinement.integration_steps
        return self.options(refinement).integration_steps

    def options(self, refinement: InstanceOptimization) -> InstanceOptimization:
        """The refinement settings this stage optimises with: ``refinement``'s, with this stage's learning rate and,
        where set, its own regulariser weight, integration steps, warm-up, Adam epsilon and edge kappa."""
        options = replace(refinement, lr=self.lr)
        if self.lambda_reg is not None:
            options = replace(options, lambda_reg=self.lambda_reg)
        if self.integration_steps is not None:
            options = replace(options, integration_steps=self.integration_steps)
        if self.warmup_steps is not None:
            options = replace(options, warmup_steps=self.warmup_steps)
        if self.adam_eps is not None:
            options = replace(options, adam_eps=self.adam_eps)
        if self.edge_kappa is not None:
            options = replace(options, edge_kappa=self.edge_kappa)
        return options


def parse_finer_overrides(text: str) -> dict[str, Any]:
    """``"steps=6,finer_velocity=true,lambda_reg=2"`` -> typed overrides of :class:`FinerGridSettings` (the
    ``--finer-grid-settings`` syntax; ``none`` resets an optional key to "the refinement's"); one line for anything
    else."""
    kinds = {"steps": int, "lr": float, "ncc_window": int, "finer_velocity": bool, "lambda_reg": float,
             "integration_steps": int, "warmup_steps": int, "parametrisation": str, "adam_eps": float,
             "edge_kappa": float}
    return parse_key_values(text, kinds, "finer-grid",
                            nullable=("lambda_reg", "integration_steps", "warmup_steps", "adam_eps", "edge_kappa"))


def finer_grid_applies(refinement: InstanceOptimization) -> bool:
    """Whether a refinement with these settings may go on with a finer-grid stage: the stage measures local NCC of
    the two raw images, which assumes one contrast, so a refinement with another similarity (MIND-SSC, two
    contrasts; unmeasured there, and its 12 descriptor channels would cost 12 warps a step) ends without it. The
    one rule of ``nnreg_predict`` and ``nnreg_register``."""
    return refinement.similarity == "lncc"


def finer_mapping(mapping: GridMapping) -> GridMapping | None:
    """The network grid of ``mapping`` subdivided ``k = round(f)`` times along each axis whose resampling factor ``f``
    (network / original spacing) is at least :data:`nnreg.planning.plans.MIN_FINER_RATIO`: the same box at about the
    original spacing, as a mapping from the original grid (factor ``f / k``, box start ``c·k``: finer voxel ``q``
    sits at ``((q + 0.5) / k + c)·f - 0.5`` original voxels, where network voxel ``(q + 0.5) / k - 0.5`` sits). With
    an integer ``f`` it is a pure crop of the original grid. None when no axis is subdivided."""
    ks = subdivisions(mapping.factor)
    if all(k == 1 for k in ks):
        return None
    return GridMapping(mapping.original_shape, tuple(f / k for f, k in zip(mapping.factor, ks)),
                       tuple(c * k for c, k in zip(mapping.crop_start, ks)),
                       tuple(n * k for n, k in zip(mapping.shape, ks)))


def refine_on_finer_grid(fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor,
                         refinement: InstanceOptimization,
                         settings: FinerGridSettings = FinerGridSettings(),
                         deterministic: bool = False,
                         start_field: torch.Tensor | None = None,
                         masks: SimilarityMasks | None = None) -> tuple[torch.Tensor, RefinementReport]:
    """Go on from ``velocity`` (1, 3, h, w, d; whole transform ``exp(v)``) with the similarity of ``fixed`` and
    ``moving`` (1, 1, H, W, D) on their finer grid; the other settings (regulariser, integration, similarity,
    patience, folding limit) are ``refinement``'s. Returns the field on the finer grid and a report whose losses are
    measured there (``initial_*``: the field of the given velocity). ``start_field``: ``exp(velocity)`` on the finer
    grid, integrated as a displacement correction integrates it, when the caller has it (the velocity stage's
    result that the correction goes on from): not integrated again. ``masks`` (on the grid of ``fixed`` and
    ``moving``) restrict the similarity (:mod:`nnreg.inference.masks`)."""
    if fixed.shape != moving.shape or fixed.dim() != 5 or fixed.shape[:2] != (1, 1):
        raise ValueError(f"expected two (1, 1, H, W, D) images, got {tuple(fixed.shape)} and {tuple(moving.shape)}")
    if velocity.dim() != 5 or velocity.shape[:2] != (1, 3):
        raise ValueError(f"expected a (1, 3, h, w, d) velocity, got {tuple(velocity.shape)}")
    if settings.parametrisation == "displacement":
        return _displacement_correction(fixed, moving, velocity, refinement, settings, deterministic, start_field,
                                        masks)
    shape = tuple(int(s) for s in fixed.shape[2:])
    options = settings.options(refinement)
    with torch.inference_mode(False), torch.enable_grad(), deterministic_mode(deterministic, fixed.device):
        with torch.no_grad():
            start = velocity.detach().float().clone().contiguous()
            if settings.finer_velocity:
                start = resize_field(start, shape).contiguous()                           # type: ignore[arg-type]
            if masks is not None and masks.moving is not None:   # the moving mask where the start samples it
                masks = masks.checked(fixed.shape, moving.shape).on_fixed(
                    exponential_field(start, shape, options.integration_steps))         # type: ignore[arg-type]
            stage = Stage(fixed.detach().float().clone(), moving.detach().float().clone(), settings.ncc_window,
                          settings.steps, tuple(int(s) for s in start.shape[2:]), options,  # type: ignore[arg-type]
                          keep_fields=True, masks=masks)
        if settings.steps == 0:
            with torch.no_grad():
                start_field = exponential_field(start, shape, options.integration_steps)  # type: ignore[arg-type]
                initial_loss, initial_ncc = (float(t) for t in stage.field_loss(start_field, start, options))
            return start_field, RefinementReport(0, initial_loss, initial_loss, initial_ncc, initial_ncc, start)
        trace = OptimisationTrace()      # the start's and the best velocity's evaluations: not evaluated again
        best, steps_run = optimise([stage], start.detach().clone().requires_grad_(True), options, trace)
        with torch.no_grad():
            assert trace.first is not None and trace.first.field is not None
            result = trace.result(stage, best, options)
            assert result.field is not None
            return _checked(result.field, trace.first.field, start, best, steps_run,
                            (trace.first.loss, trace.first.ncc), (result.loss, result.ncc), options, "velocity")


def _checked(refined: torch.Tensor, start_field: torch.Tensor, start_velocity: torch.Tensor,
             velocity: torch.Tensor, steps_run: int, initial: tuple[float, float], final: tuple[float, ...],
             options: InstanceOptimization, parametrisation: str) -> tuple[torch.Tensor, RefinementReport]:
    """The stage's field and report, or its start field when :func:`refusal` refuses the result (not finite, a
    higher loss, folding; the report then carries ``start_velocity`` and the reason). ``initial`` and ``final``:
    (loss, NCC loss) of the start and of the result."""
    (initial_loss, initial_ncc), (final_loss, final_ncc) = initial, final
    folding = folding_percent(refined) if math.isfinite(final_loss) else math.nan
    reason = refusal(refined, start_field, final_loss, initial_loss, options, folding)
    if reason:
        logger.info("finer-grid stage: the coarse grid's field is kept (%s)", reason)
        return start_field, RefinementReport(steps_run, initial_loss, initial_loss, initial_ncc, initial_ncc,
                                             start_velocity, True, reason, folding_percent(start_field))
    logger.debug("finer-grid stage (%s): %d steps, loss %.4f -> %.4f", parametrisation, steps_run, initial_loss,
                 final_loss)
    return refined, RefinementReport(steps_run, initial_loss, final_loss, initial_ncc, final_ncc, velocity,
                                     folding_percent=folding)


def _displacement_correction(fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor,
                             refinement: InstanceOptimization, settings: FinerGridSettings,
                             deterministic: bool, start_field: torch.Tensor | None = None,
                             masks: SimilarityMasks | None = None) -> tuple[torch.Tensor, RefinementReport]:
    """The ``"displacement"`` parametrisation (module docstring): optimise ``w`` from zero against the moving image
    warped once by ``exp(v)`` (integrated with the refinement's steps); the field is ``compose(exp(v), w)``, with
    ``w`` itself integrated by this stage's ``integration_steps`` when set (default 0: a plain displacement). The
    report's velocity is ``v``, whose ``exp(-v)`` starts the inverse's fixed-point iteration (``--inverse``)."""
    shape = tuple(int(s) for s in fixed.shape[2:])
    options = replace(settings.options(refinement),                 # exp(v) integrated as the refinement did
                      integration_steps=settings.velocity_integration_steps(refinement))
    correction = replace(options, integration_steps=settings.integration_steps or 0)
    with torch.inference_mode(False), torch.enable_grad(), deterministic_mode(deterministic, fixed.device):
        with torch.no_grad():
            start = velocity.detach().float().clone().contiguous()
            if start_field is None:
                start_field = exponential_field(start, shape, options.integration_steps)  # type: ignore[arg-type]
            elif tuple(start_field.shape) != (1, 3, *shape):
                raise ValueError(f"start field {tuple(start_field.shape)} does not match the images {shape}")
            start_field = start_field.detach().to(device=fixed.device, dtype=torch.float32)
            moved = warp(moving.detach().float(), start_field).contiguous()
            if masks is not None:         # the moving mask where exp(v), this stage's start, samples it
                masks = masks.checked(fixed.shape, moving.shape).on_fixed(start_field)
            stage = Stage(fixed.detach().float().clone(), moved, settings.ncc_window, settings.steps,
                          shape, correction, keep_fields=True, masks=masks)              # type: ignore[arg-type]
            zero = torch.zeros_like(start_field)
        if settings.steps == 0:
            with torch.no_grad():
                initial_loss, initial_ncc = (float(t) for t in stage.field_loss(zero, zero, correction))
            return start_field, RefinementReport(0, initial_loss, initial_loss, initial_ncc, initial_ncc, start)
        trace = OptimisationTrace()      # w = 0's and the best w's evaluations: not evaluated again
        best, steps_run = optimise([stage], zero.clone().requires_grad_(True), correction, trace)
        with torch.no_grad():
            assert trace.first is not None
            result = trace.result(stage, best, correction)
            assert result.field is not None
            return _checked(compose(start_field, result.field), start_field, start, start, steps_run,
                            (trace.first.loss, trace.first.ncc), (result.loss, result.ncc), options, "displacement")
