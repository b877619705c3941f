"""Turn a dataset fingerprint into a plans file.

The planner decides per configuration: target spacing (``3d_fullres`` = median spacing, ``3d_halfres`` = twice
it), normalisation, the network box and then the architecture and batch size through a *decision function*
``decide(box_shape, settings) -> Decision``. The default decision uses fixed, shape-derived defaults; the
memory-driven planner replaces only that function.

``3d_fullres`` and ``3d_halfres`` are never the same network: when the decision gives ``3d_fullres`` the same
width and kernel on the same output grid (spacing x 2**skip_levels) as ``3d_halfres`` — e.g. a CPU time target
that made it skip its finest level — it is re-planned with its finer resolution kept and training steps traded
for time without limit (``cpu_max_slowdown`` unlimited); only if memory forbids that do both stay, with a note.

Every configuration also records ``contrast_augmentation`` for the trainer, by the rule of
:mod:`nnreg.planning.contrast` (on when the dataset names more than one modality) applied to
``PlannerSettings.modalities``; ``PlannerSettings.contrast_augmentation`` forces it. The reason goes to the plans'
``planner["contrast_augmentation_why"]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from nnreg.planning.contrast import DatasetModalities, choose_contrast_augmentation
from nnreg.planning.plans import (DEFAULT_INSTANCE_OPTIMIZATION, FINER_STAGE_INSTANCE_OPTIMIZATION,
                                  NATIVE_2MM_INSTANCE_OPTIMIZATION, ConfigurationPlan, Plans, finer_stage_follows)
from nnreg.planning.topology import cascade_depth, network_box
from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)

CONFIGURATIONS = {"3d_fullres": 1.0, "3d_halfres": 2.0}
CPU_DEPLOYMENT = "3d_halfres"           # planned to register a pair on a CPU in seconds, whatever device trains it
DEFAULT_CPU_INFERENCE_SECONDS = 15.0    # on 2 cores: below the VoxelMorph baseline network (documentation/planner.md)
MARGIN_MM = 4.0
FINE_VELOCITY_SPACING_MM = 2.0          # control spacing of the refinement's fine stage (documentation/prediction.md)
FINER_STAGE_MAX_SPACING_MM = 2.5        # FINER_STAGE_INSTANCE_OPTIMIZATION on network grids up to this (2 mm measured)
NATIVE_2MM_SPACING_MM = (1.5, 2.5)      # NATIVE_2MM_INSTANCE_OPTIMIZATION on grids in this range without a finer stage


@dataclass
class PlannerSettings:
    """Options of a planning run (CLI flags map onto these)."""

    plans_name: str = "nnRegPlans"
    device: str = "cuda"
    memory_target_gb: float = 24.0
    extra: dict[str, Any] = field(default_factory=dict)
    contrast_augmentation: bool | None = None       # forced on / off; None: the rule of nnreg.planning.contrast
    modalities: DatasetModalities | None = None     # what that rule looks at (nnreg_plan_and_preprocess fills it)


@dataclass
class Decision:
    """What a decision function returns for one configuration."""

    architecture: dict[str, Any]
    batch_size: int
    divisor: int
    notes: dict[str, Any] = field(default_factory=dict)


DecisionFunction = Callable[[list[int], PlannerSettings], Decision]


def choose_normalization(intensity: dict[str, Any]) -> dict[str, Any]:
    """The normalisation scheme (see ``nnreg.preprocessing.normalization``) for a dataset from its fingerprint's pooled foreground intensity statistics."""
    upper = float(intensity["percentiles"]["99.5"])
    if intensity["min"] >= 0.0 and intensity["max"] <= 255.0 and upper >= 64.0:
        return {"scheme": "fixed_range", "lower": 0.0, "upper": 255.0}
    return {"scheme": "percentile", "lower_percentile": 0.5, "upper_percentile": 99.5}


def fixed_default_decision(box: list[int], settings: PlannerSettings) -> Decision:
    """The paper's backbone with a cascade deep enough for a coarsest level of ~8-16 voxels; batch size 1."""
    from nnreg.networks import default_architecture

    levels = cascade_depth(box)
    return Decision(architecture=default_architecture(levels), batch_size=1, divisor=2 ** (levels - 1),
                    notes={"rule": "fixed defaults: coarsest cascade level >= 8 voxels per axis"})


def refinement_settings(spacing: list[float], resampling_factor: list[float] | None = None) -> dict[str, Any]:
    """The refinement a configuration records: the defaults, with the fine stage's velocity on a grid of about
    ``FINE_VELOCITY_SPACING_MM`` (grid / 1 at 2 mm, grid / 2 at 1 mm), never coarser than the coarse stage's; and,
    when a finer-grid stage follows (``finer_stage_follows(resampling_factor)``) a network grid of
    at most ``FINER_STAGE_MAX_SPACING_MM`` (the measured case: a 2 mm grid over 1 mm images), the finer-stage
    additions; a grid of about 2 mm (``NATIVE_2MM_SPACING_MM``, measured at 2 mm only) that no finer stage follows
    (2 mm data) gets the 2 mm additions instead. A plans file holds one entry per configuration: an image far off
    the median spacing may get the additions without a finer stage (or the reverse).
    """
    settings = dict(DEFAULT_INSTANCE_OPTIMIZATION)
    finer = resampling_factor is not None and finer_stage_follows(resampling_factor)
    if finer and min(spacing) <= FINER_STAGE_MAX_SPACING_MM:
        settings.update(FINER_STAGE_INSTANCE_OPTIMIZATION)
    elif not finer and NATIVE_2MM_SPACING_MM[0] <= min(spacing) <= NATIVE_2MM_SPACING_MM[1]:
        settings.update(NATIVE_2MM_INSTANCE_OPTIMIZATION)
    fine = max(1, round(FINE_VELOCITY_SPACING_MM / min(spacing)))
    settings["fine_grid_factor"] = int(min(settings["grid_factor"], fine))
    return settings


def plan_configuration(name: str, spacing_factor: float, fingerprint: dict[str, Any], settings: PlannerSettings,
                       plans_name: str, decide: DecisionFunction) -> ConfigurationPlan:
    """Plan one configuration: grid first, then the architecture on that grid, then the box it needs."""
    spacing = [s * spacing_factor for s in fingerprint["median_spacing"]]
    factor = [spacing_factor] * 3
    resampled = [max(1, round(n / f)) for n, f in zip(fingerprint["median_shape"], factor)]
    margin = max(1, round(MARGIN_MM / min(spacing)))
    fg_box = fingerprint["union_foreground_bbox"]
    # the box before rounding decides the depth; the depth's divisor then rounds the box
    _, rough = network_box(fg_box, resampled, factor, 1, margin)
    decision = decide(rough, settings)
    crop_start, shape = network_box(fg_box, resampled, factor, decision.divisor, margin)
    notes = dict(decision.notes)
    if not fingerprint.get("same_grid", True):
        notes["grid"] = ("images differ in shape or spacing: planned on the median grid; each image is "
                         "resampled and its box centred (images must be pre-aligned, as Learn2Reg requires)")
    return ConfigurationPlan(
        data_identifier=f"{plans_name}_{name}",
        spacing=spacing,
        resampling_factor=factor,
        resampled_shape=resampled,
        crop_start=crop_start,
        shape=shape,
        normalization=choose_normalization(fingerprint["intensity"]),
        batch_size=decision.batch_size,
        architecture=decision.architecture,
        notes=notes,
        instance_optimization=refinement_settings(spacing, factor),
    )


def settings_for(configuration: str, settings: PlannerSettings) -> PlannerSettings:
    """The settings one configuration is planned with: the CPU deployment configuration also gets an inference
    time target (``cpu_inference_seconds`` on 2 cores), so a model trained on a GPU still registers on a CPU fast."""
    extra = {k: v for k, v in settings.extra.items() if k != "cpu_inference_seconds"}
    if configuration == CPU_DEPLOYMENT:
        extra["cpu_inference_seconds"] = float(settings.extra.get("cpu_inference_seconds")
                                               or DEFAULT_CPU_INFERENCE_SECONDS)
    return replace(settings, extra=extra)


def output_grid(cfg: ConfigurationPlan) -> tuple[Any, ...]:
    """What makes two configurations the same network: the grid the field is estimated on (mm, after the
    skipped levels), the network class, width and kernel size."""
    kw = cfg.architecture.get("kwargs", {})
    skip = int(kw.get("skip_levels", 0) or 0)
    return (tuple(round(s * 2 ** skip, 6) for s in cfg.spacing), cfg.architecture.get("network_class"),
            kw.get("base_channels"), kw.get("kernel_size"))


def _keep_fullres_distinct(configs: dict[str, ConfigurationPlan], fingerprint: dict[str, Any],
                           settings: PlannerSettings, decide: DecisionFunction) -> None:
    """Re-plan ``3d_fullres`` finer when it came out as the same network as ``3d_halfres`` (module docstring)."""
    full, half = configs.get("3d_fullres"), configs.get(CPU_DEPLOYMENT)
    if full is None or half is None or output_grid(full) != output_grid(half):
        return
    skip = int(full.architecture.get("kwargs", {}).get("skip_levels", 0) or 0)
    reason = (f"the first decision ({full.architecture['kwargs'].get('base_channels')} channels, skip {skip}) was "
              f"the same network as {CPU_DEPLOYMENT}")
    if skip == 0:
        full.notes["same_network"] = reason + " and no finer resolution exists"
        return
    finer = settings_for("3d_fullres", settings)
    finer = replace(finer, extra={**finer.extra, "max_skip": skip - 1, "cpu_max_slowdown": float("inf")})
    try:
        replanned = plan_configuration("3d_fullres", CONFIGURATIONS["3d_fullres"], fingerprint, finer,
                                       settings.plans_name, decide)
    except NnregError as exc:
        full.notes["same_network"] = f"{reason}; a finer resolution does not fit ({exc})"
        logger.warning("3d_fullres is the same network as %s: a finer one does not fit the memory", CPU_DEPLOYMENT)
        return
    replanned.notes["why"] = f"{reason}; re-planned keeping resolution: {replanned.notes.get('why', '')}"
    configs["3d_fullres"] = replanned


def plan_experiment(fingerprint: dict[str, Any], settings: PlannerSettings,
                    decide: DecisionFunction = fixed_default_decision) -> Plans:
    """Plans for every configuration of a dataset."""
    configs = {name: plan_configuration(name, f, fingerprint, settings_for(name, settings), settings.plans_name,
                                        decide)
               for name, f in CONFIGURATIONS.items()}
    _keep_fullres_distinct(configs, fingerprint, settings, decide)
    contrast, why = choose_contrast_augmentation(settings.contrast_augmentation, settings.modalities)
    for config in configs.values():
        config.contrast_augmentation = contrast
    logger.info("contrast augmentation %s: %s", "on" if contrast else "off", why)
    planner: dict[str, Any] = {"decision": getattr(decide, "__name__", str(decide)), "device": settings.device,
                               "memory_target_gb": settings.memory_target_gb, "contrast_augmentation_why": why}
    if settings.device == "cpu":
        planner.update({k: v for k, v in settings.extra.items()
                        if k in ("cpu_trade_order", "cpu_max_slowdown", "cpu_seconds_per_pair")})
    return Plans(
        dataset_name=fingerprint["dataset_name"],
        plans_name=settings.plans_name,
        original_median_spacing=fingerprint["median_spacing"],
        original_median_shape=fingerprint["median_shape"],
        configurations=configs,
        planner=planner,
    )
