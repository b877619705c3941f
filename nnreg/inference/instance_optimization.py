"""Test-time instance optimisation: refine one pair's network field by a diffeomorphic correction.

Conventions (those of :mod:`nnreg.spatial`): tensors ``(B, C, H, W, D)`` in array-axis order, fields are voxel-unit
**pull** fields on the fixed grid, ``warped(x) = moving(x + u(x))``; grids of different resolution share their
extent with voxel centres at ``(i + 0.5) * spacing`` (:func:`nnreg.spatial.resize_field`).

``exp(v)`` is the scaling-and-squaring exponential of a stationary velocity ``v`` on a coarse grid (network grid /
``grid_factor``), resized to the grid where the similarity is evaluated and, at the end, to the network grid. Two
parametrisations (``velocity_start``):

* ``"zero"``: the refined field is ``u_net o c`` with ``c = exp(v)`` (:func:`nnreg.spatial.compose`): warping by it
  equals warping the moving image by the network's field ``u_net`` first and then by the correction ``c``, so the
  moving image warped by the network is computed once and only the correction is optimised, from ``v = 0``. The
  regulariser sees the correction only.
* ``"network"``: the refined field is ``exp(v)`` itself, ``v`` starting from ``u_net`` resampled to the velocity grid
  (``exp(v) ~ id + v`` for smooth fields): the network gives the starting point, the regulariser sees the whole
  transform, and the moving image is warped once per step from the original (one interpolation, not two). Measured
  on training pairs, this lowers HD95 (documentation/prediction.md).

The loss is the training loss of one level: ``-LNCC(fixed, moving o phi) + lambda_reg * ||grad v||^2`` (``v`` in its
own voxel units; with ``edge_kappa > 0`` each squared difference of ``v`` is weighted down across the fixed image's
edges in the local NCC stages, :mod:`nnreg.losses.edge_weights`; ``similarity="mind"`` replaces the LNCC term by
the MIND-SSC loss of :mod:`nnreg.losses.mind`, for pairs of different contrasts), minimised by Adam (0 steps
return the network's field unchanged) in two stages:
``steps`` on the network grid / ``image_factor`` (cheap: 1/8 of the voxels) with ``v`` on the network grid /
``grid_factor``, then ``fine_steps`` on the network grid itself with ``v`` on the network grid / ``fine_grid_factor``
(resampled by :func:`nnreg.spatial.resize_field`, Adam restarted, when that grid differs; otherwise ``v`` and the
optimiser carry on; after each restart the learning rate can ramp up over ``warmup_steps``, :func:`warmup_lr`), each
stopped early when its loss stops improving (or at once on a non-finite loss). Each stage goes on from, and the
refinement returns, the **best** velocity it evaluated (lowest loss), not the last iterate. The result is then
checked against the network's own field, scored by the same loss on the last stage's grid (its similarity, plus the
regulariser of its velocity representation): the network's field is returned unchanged when the refined one is not
finite, has a higher loss, or folds (``det(I + grad u) <= 0``, central differences) on more than
``max_folding_percent`` of the voxels and more than the network's field does; with ``edge_kappa > 0`` a refused
field is first refined again with the plain regulariser (which folds less), and that result is checked the same way
(a network start that is the identity would otherwise return a zero field). Everything runs on the predictor's
device; on the CPU the result is bitwise reproducible for a fixed thread count. The settings live in
:mod:`nnreg.inference.refinement_settings`.

With ``similarity="mind"`` and ``remap_steps``, one more stage follows the MIND ones: local NCC on the network grid
against the moving image whose intensities were mapped onto the fixed image's contrast under the MIND result
(:mod:`nnreg.inference.intensity_mapping`); it is then the last stage, whose loss scores the network's field too.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from nnreg.inference.intensity_mapping import apply_mapping, conditional_mean_mapping
from nnreg.inference.masks import SimilarityMasks, downsample, edge_weights_on_grid
from nnreg.inference.refinement_settings import InstanceOptimization
from nnreg.losses import gradient_l2
from nnreg.losses.ncc import TargetWindows
from nnreg.losses.mind import mind_descriptor_loss, mind_ssc
from nnreg.inference.refusal import folding_percent, refusal
from nnreg.spatial import compose, integrate_velocity, resize_field, warp
from nnreg.spatial.warp import Box
from nnreg.utilities.optim import Adam

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefinementReport:
    """What one refinement did (for logs, benchmarks and tests). Losses are measured on the last stage's grid:
    ``initial_*`` of the network's field, ``final_*`` of the returned field (the same when the network's is kept)."""

    steps_run: int
    initial_loss: float
    final_loss: float
    initial_ncc: float
    final_ncc: float
    velocity: torch.Tensor | None = None   # the optimised velocity v (field exp(v) or u_net o exp(v)); None: network kept
    kept_network: bool = False             # the network's field was returned (``reason`` says why)
    reason: str = ""
    folding_percent: float = math.nan      # % of voxels of the returned field with det(I + grad u) <= 0
    remapped: bool = False                 # the last stage was local NCC against the remapped moving image
    edge_fallback: bool = False            # refused with edge_kappa > 0, so refined again with the plain regulariser


def _shrink(shape: tuple[int, ...], factor: int) -> tuple[int, int, int]:
    return tuple(max(2, math.ceil(int(s) / factor)) for s in shape)  # type: ignore[return-value]


@contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms while refining (CUDA's grid_sample backward has none: warn, as the trainer does)."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def exponential_field(velocity: torch.Tensor, size: tuple[int, int, int], integration_steps: int) -> torch.Tensor:
    """``exp(v) - id`` integrated on the velocity's grid, resized to ``size`` (voxel units of that grid)."""
    return resize_field(integrate_velocity(velocity, integration_steps), size)


class Stage:
    """The images of one optimisation stage on its similarity grid: the fixed image and the moving image, the
    latter warped by the network's field once when the velocity is a correction of it (``velocity_start="zero"``);
    with ``similarity="mind"`` both are replaced by their MIND-SSC descriptors (computed once; the moving one is
    warped). ``grid`` is the stage's velocity grid.

    Local NCC is computed on ``box`` only: the fixed image's non-zero voxels grown by ``window - 1``. Outside it every
    window of the fixed image is all zeros, so its ``cc`` is exactly 0 (:mod:`nnreg.losses.ncc`), and inside it
    every window that reaches past the box holds only zeros of the fixed image too: the sum over the box divided by
    the whole grid's voxel count is the whole grid's mean. A skull-stripped brain's box is ~3/4 of the grid.

    ``masks`` (:mod:`nnreg.inference.masks`, on the grids of ``target`` and ``source``) weight each voxel's
    similarity; a moving mask is taken as it is (the stage's start is the identity; callers starting elsewhere pass
    :meth:`SimilarityMasks.on_fixed` of their start)."""

    def __init__(self, target: torch.Tensor, source: torch.Tensor, window: int, steps: int,
                 grid: tuple[int, int, int], settings: InstanceOptimization, keep_fields: bool = False,
                 masks: SimilarityMasks | None = None) -> None:
        self.keep_fields = keep_fields   # :meth:`loss` keeps its field in ``last_field`` (for OptimisationTrace)
        self.last_field: torch.Tensor | None = None
        self.mind = settings.similarity == "mind"
        masks = SimilarityMasks() if masks is None else masks.checked(target.shape, source.shape).on_fixed(None)
        if self.mind:
            target = mind_ssc(target, settings.mind_radius, settings.mind_dilation)
            source = mind_ssc(source, settings.mind_radius, settings.mind_dilation)
        self.target, self.source, self.window, self.steps, self.grid = target, source, window, steps, grid
        self.size: tuple[int, int, int] = tuple(int(s) for s in target.shape[2:])  # type: ignore[assignment]
        self.box = None if self.mind else _foreground_box(target, window - 1)
        target_box = target if self.box is None else target[:, :, self.box[0], self.box[1], self.box[2]].contiguous()
        self.windows = None if self.mind else TargetWindows(target_box, window)   # the fixed image's sums, once
        self.voxels = float(target.shape[2] * target.shape[3] * target.shape[4])
        fixed_weight = masks.fixed
        if fixed_weight is not None and self.box is not None:
            fixed_weight = fixed_weight[:, :, self.box[0], self.box[1], self.box[2]]
        self.fixed_weight = None if fixed_weight is None else fixed_weight.to(target.device).contiguous()
        self.edge_weights = None        # the regulariser's per-axis weights on the velocity grid (edge_kappa > 0)
        if settings.edge_kappa > 0 and not self.mind:
            self.edge_weights = edge_weights_on_grid(target, grid, settings.edge_kappa, settings.edge_floor,
                                                     masks.fixed)

    def loss(self, velocity: torch.Tensor, settings: InstanceOptimization) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, NCC loss) of the transform ``exp(velocity)`` of this stage's source, on this stage's grid."""
        field = exponential_field(velocity, self.size, settings.integration_steps)
        if self.keep_fields:           # a copy where the field is the velocity itself (no integration, same grid):
            same = field.untyped_storage().data_ptr() == velocity.untyped_storage().data_ptr()
            self.last_field = field.detach().clone() if same else field.detach()   # Adam steps it in place
        return self.field_loss(field, velocity, settings)

    def field_loss(self, field: torch.Tensor, velocity: torch.Tensor,
                   settings: InstanceOptimization) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, NCC loss) of the displacement ``field`` (this stage's grid) regularised through ``velocity``."""
        warped = warp(self.source, field, box=self.box)
        if self.mind:
            similarity = mind_descriptor_loss(self.target, warped, self.fixed_weight)
        else:
            assert self.windows is not None
            cc = self.windows.cc(warped)
            if self.fixed_weight is not None:   # the masks' weights (the same scale: a mask of ones is no mask)
                cc = cc * self.fixed_weight
            similarity = -cc.sum() / self.voxels
        return similarity + settings.lambda_reg * gradient_l2(velocity, self.edge_weights), similarity


def _foreground_box(image: torch.Tensor, margin: int) -> Box | None:
    """Slices of the bounding box of ``image != 0`` grown by ``margin`` voxels (None: the whole grid)."""
    nonzero = image[0, 0] != 0
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = torch.nonzero(nonzero.any(dim=other[1]).any(dim=other[0])).flatten()
        if present.numel() == 0:
            return None
        size = int(image.shape[2 + axis])
        slices.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, size)))
    box = (slices[0], slices[1], slices[2])
    if all(s.start == 0 and s.stop == n for s, n in zip(box, image.shape[2:])):
        return None
    return box


def _stages(fixed: torch.Tensor, source: torch.Tensor, settings: InstanceOptimization,
            masks: SimilarityMasks) -> list[Stage]:
    shape = tuple(int(s) for s in fixed.shape[2:])
    plan = [(settings.image_factor, settings.ncc_window, settings.steps, settings.grid_factor)]
    if settings.fine_steps > 0 and settings.image_factor > 1:
        plan.append((1, settings.fine_ncc_window, settings.fine_steps, settings.fine_grid_factor))
    stages = []
    for factor, window, steps, grid_factor in plan:
        size = _shrink(shape, factor)
        stages.append(Stage(downsample(fixed, size).contiguous(), downsample(source, size).contiguous(),
                             window, steps, _shrink(shape, grid_factor), settings, masks=masks.resized(size)))
    return stages


@dataclass(frozen=True)
class Evaluation:
    """One loss evaluation of :func:`optimise`: (total loss, NCC loss) and, where the stage keeps them
    (``Stage.keep_fields``), the field ``exp(v)`` it was measured on (detached)."""

    loss: float
    ncc: float
    field: torch.Tensor | None = None


@dataclass
class OptimisationTrace:
    """What :func:`optimise` measured on its last stage, so that a caller need not evaluate the same velocities
    again (a 1 mm evaluation is 3 grid samples of 7 million voxels): the stage's first evaluation (its start
    velocity) and that of the returned velocity (None when no finite loss was evaluated). The values are those a
    separate evaluation gives: the same arithmetic, with gradients recorded."""

    first: Evaluation | None = None
    best: Evaluation | None = None

    def result(self, stage: Stage, velocity: torch.Tensor, settings: InstanceOptimization) -> Evaluation:
        """The evaluation of ``velocity``, the velocity :func:`optimise` returned for ``stage``: the traced best one
        with its field, or (no finite loss was evaluated, so the start was returned) evaluated now."""
        if self.best is not None and self.best.field is not None:
            return self.best
        field = exponential_field(velocity, stage.size, settings.integration_steps)
        loss, ncc = stage.field_loss(field, velocity, settings)
        return Evaluation(float(loss), float(ncc), field)


def optimise(stages: list[Stage], velocity: torch.Tensor, settings: InstanceOptimization,
             trace: OptimisationTrace | None = None) -> tuple[torch.Tensor, int]:
    """Adam through the stages; each stage goes on from the best velocity of the one before. Returns the best
    velocity of the last stage that evaluated a finite loss (the start when none did) and the steps run (loss
    evaluations); ``trace`` receives the last stage's first and best evaluations.

    A stage's last evaluation only scores the velocity the step before it reached: it runs without a gradient and
    takes no Adam step (whose result no evaluation would ever see, and which the stage's best iterate replaces). Why:
    that backward was 1.9 s of the 14 s of a 1 mm velocity stage of 4 steps (2 CPU cores); the returned velocity is
    bit for bit the same, since the next stage (or the caller) always goes on from the best iterate, with a fresh
    Adam."""
    optimizer = Adam([{"params": [velocity], "lr": settings.lr}], eps=settings.adam_eps)
    steps_run = 0
    for stage in stages:
        if tuple(velocity.shape[2:]) != stage.grid:    # a finer velocity grid: resample v, restart Adam
            with torch.no_grad():
                velocity = resize_field(velocity.detach(), stage.grid).contiguous().requires_grad_(True)
            optimizer = Adam([{"params": [velocity], "lr": settings.lr}], eps=settings.adam_eps)
        best, best_velocity = math.inf, None          # the lowest loss evaluated and the velocity it was measured at
        best_evaluation: Evaluation | None = None
        patience_best, since_best = math.inf, 0       # early stopping: improvements of at least min_delta
        traced = trace is not None and stage is stages[-1]
        for step in range(stage.steps):
            optimizer.param_groups[0]["lr"] = warmup_lr(settings, optimizer.steps)
            optimizer.zero_grad(set_to_none=True)
            last = step == stage.steps - 1
            with torch.set_grad_enabled(not last):
                loss, ncc = stage.loss(velocity, settings)
            value = float(loss.detach())
            evaluation = Evaluation(value, float(ncc.detach()), stage.last_field) if traced else None
            if traced and step == 0:
                trace.first = evaluation               # type: ignore[union-attr]
            if not math.isfinite(value):
                logger.warning("instance optimisation: non-finite loss after %d steps; keeping the best field so far",
                               steps_run)
                break
            if value < best:
                best, best_velocity, best_evaluation = value, velocity.detach().clone(), evaluation
            steps_run += 1
            if last:
                break
            loss.backward()
            optimizer.step()
            if value < patience_best - settings.min_delta:
                patience_best, since_best = value, 0
            else:
                since_best += 1
                if since_best >= settings.patience:
                    break
        if best_velocity is not None:
            velocity = best_velocity.requires_grad_(True)     # go on from the best iterate, with a fresh Adam
            optimizer = Adam([{"params": [velocity], "lr": settings.lr}], eps=settings.adam_eps)
        if traced:
            trace.best = best_evaluation               # type: ignore[union-attr]
    for stage in stages:                               # the trace holds what is needed; free the rest
        stage.last_field = None
    return velocity.detach(), steps_run


def warmup_lr(settings: InstanceOptimization, steps_taken: int) -> float:
    """The learning rate of the next Adam step after ``steps_taken`` steps of a fresh Adam: ``lr`` ramped linearly
    over ``warmup_steps`` steps (``lr·(t + 1)/(warmup_steps + 1)``), then ``lr``. Why: Adam's first step moves every
    component by about the learning rate whatever its gradient, so a stage that restarts Adam from a good velocity
    first moves away from it."""
    if steps_taken >= settings.warmup_steps:
        return settings.lr
    return settings.lr * (steps_taken + 1) / (settings.warmup_steps + 1)


def refine_field(fixed: torch.Tensor, moving: torch.Tensor, displacement: torch.Tensor,
                 settings: InstanceOptimization, deterministic: bool = False,
                 masks: SimilarityMasks | None = None) -> tuple[torch.Tensor, RefinementReport]:
    """Refine ``displacement`` (1, 3, H, W, D) for the pair ``fixed``/``moving`` (1, 1, H, W, D), network grid;
    ``masks`` (on the grid of ``fixed`` and ``moving``) restrict the similarity (:mod:`nnreg.inference.masks`).

    Returns ``exp(v)`` (``velocity_start="network"``) or ``u_net o exp(v)`` (``"zero"``) on the same grid (float32,
    detached) — or the network's field unchanged when the refined one is not better (module docstring) — and a
    report whose losses are measured on the last stage's grid. ``steps == 0`` returns the input unchanged.
    """
    if fixed.shape != moving.shape or fixed.dim() != 5 or fixed.shape[:2] != (1, 1):
        raise ValueError(f"expected two (1, 1, H, W, D) images, got {tuple(fixed.shape)} and {tuple(moving.shape)}")
    if tuple(displacement.shape) != (1, 3, *fixed.shape[2:]):
        raise ValueError(f"field {tuple(displacement.shape)} does not match the images {tuple(fixed.shape)}")
    displacement = displacement.detach().float()
    if not settings.enabled:
        return displacement, RefinementReport(0, math.nan, math.nan, math.nan, math.nan)
    shape = tuple(int(s) for s in fixed.shape[2:])
    requested = settings                                # the caller's (the remap stage replaces ``settings``)
    whole = settings.velocity_start == "network"       # v is the whole transform: no network field to compose
    with torch.inference_mode(False), torch.enable_grad(), deterministic_mode(deterministic, fixed.device):
        with torch.no_grad():   # clones: inference-mode tensors cannot enter autograd
            displacement = displacement.clone()
            moving = moving.detach().float().clone()
            fixed, source = fixed.detach().float().clone(), moving if whole else warp(moving, displacement)
            masks = SimilarityMasks() if masks is None else masks.checked(fixed.shape, moving.shape)
            masks = masks.on_fixed(displacement)          # the moving mask where the start samples it
            stages = _stages(fixed, source, settings, masks)
            grid = stages[0].grid     # the first stage's velocity grid: where v starts
            start = resize_field(displacement, grid) if whole else torch.zeros((1, 3, *grid))
            start = start.to(device=fixed.device, dtype=torch.float32).contiguous()
            last = stages[-1]
        velocity, steps_run = optimise(stages, start.requires_grad_(True), settings)
        remapped = _remapped_stage(fixed, source, last.grid, velocity, settings, masks)
        if remapped is not None:      # the last stage is now local NCC against the remapped moving image
            last, settings = remapped
            velocity, more = optimise([last], velocity.detach().clone().requires_grad_(True), settings)
            steps_run += more
        with torch.no_grad():
            # the network's own field, scored by the same loss on the (final) last stage's grid
            network_start = resize_field(displacement, last.grid) if whole else torch.zeros((1, 3, *last.grid))
            network_field = resize_field(displacement, last.size) if whole else torch.zeros((1, 3, *last.size))
            initial_loss, initial_ncc = (float(t) for t in last.field_loss(
                network_field.to(start.device), network_start.to(start.device), settings))
            final_loss, final_ncc = (float(t) for t in last.loss(velocity, settings))
            exp_v = exponential_field(velocity, shape, settings.integration_steps)
            refined = exp_v if whole else compose(displacement, exp_v)
            reason = refusal(refined, displacement, final_loss, initial_loss, settings)
            folding = folding_percent(refined) if not reason else folding_percent(displacement)
    weighted = any(stage.edge_weights is not None for stage in (*stages, last))
    if reason and weighted:       # the plain regulariser is the fallback, not the start
        logger.info("instance optimisation: refused with the edge-aware regulariser (%s); refining again without it",
                    reason)
        refined, report = refine_field(fixed, moving, displacement, replace(requested, edge_kappa=0.0),
                                       deterministic, masks)
        return refined, replace(report, steps_run=report.steps_run + steps_run, edge_fallback=True)
    if reason:
        logger.info("instance optimisation: the network's field is kept (%s)", reason)
        report = RefinementReport(steps_run, initial_loss, initial_loss, initial_ncc, initial_ncc, None, True, reason,
                                  folding, remapped is not None)
        return displacement, report
    report = RefinementReport(steps_run, initial_loss, final_loss, initial_ncc, final_ncc, velocity,
                              folding_percent=folding, remapped=remapped is not None)
    logger.debug("instance optimisation: %d steps, loss %.4f -> %.4f", steps_run, initial_loss, final_loss)
    return refined, report


def _remapped_stage(fixed: torch.Tensor, source: torch.Tensor, grid: tuple[int, int, int], velocity: torch.Tensor,
                    settings: InstanceOptimization, masks: SimilarityMasks
                    ) -> tuple[Stage, InstanceOptimization] | None:
    """With ``remap_steps`` after a MIND-SSC refinement: the local NCC stage (network grid, velocity on ``grid``,
    ``fine_ncc_window``, ``remap_lambda_reg``) against ``source`` mapped onto ``fixed``'s contrast by their
    joint intensities under ``exp(velocity)`` (:mod:`nnreg.inference.intensity_mapping`), and its settings; None when
    the setting is off or the two images share too few foreground voxels to map (logged)."""
    if settings.remap_steps == 0 or settings.similarity != "mind":
        return None
    with torch.no_grad():
        size = tuple(int(s) for s in fixed.shape[2:])
        warped = warp(source, exponential_field(velocity.detach(), size, settings.integration_steps))
        try:
            t, f = conditional_mean_mapping(fixed, warped)
        except ValueError as error:
            logger.info("instance optimisation: no remapped local NCC stage (%s)", error)
            return None
        lncc = replace(settings, similarity="lncc", lambda_reg=settings.remap_lambda_reg)
        stage = Stage(fixed.contiguous(), apply_mapping(source, t, f).contiguous(), settings.fine_ncc_window,
                      settings.remap_steps, grid, lncc, masks=masks)
    logger.debug("instance optimisation: moving intensities remapped through %d points", t.numel())
    return stage, lncc
