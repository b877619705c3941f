"""Pairwise registration of two user images: normalise -> working grids -> affine -> deformable refinement from
the identity and, with a trained model, also from the network's field carried onto the working grid
(:mod:`nnreg.registration.network`; the start whose refinement reaches the lower loss is kept) -> the last steps
on a finer grid when the fixed image is finer than the working grid (the velocity, then a displacement correction).

Conventions: see :mod:`nnreg.alignment.grids` (LPS mm, ``(i, j, k)`` arrays). The optimisation runs on **working
grids**: each image's own physical box, canonically oriented, at ``working_spacing`` mm. The affine ``T`` maps the
fixed image's physical space to the moving image's (pull). The deformable part is a voxel-unit pull field ``u`` on
the fixed working grid (:mod:`nnreg.spatial` conventions) of the moving image already resampled through ``T``; the
whole transform of a fixed point ``p`` is therefore ``T(p + d(p))`` with ``d`` the physical (mm) version of ``u``
(:mod:`nnreg.registration.outputs` turns it into files on the fixed image's own grid).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from nnreg.alignment.affine import AffineResult, AffineSettings
from nnreg.alignment.grids import subdivided_geometry
from nnreg.alignment.sampling import sample_affine
from nnreg.dataset.image_io import Geometry
from nnreg.inference.finer_grid import FinerGridSettings, finer_grid_applies, refine_on_finer_grid
from nnreg.inference.instance_optimization import InstanceOptimization, RefinementReport, refine_field
from nnreg.inference.masks import SimilarityMasks
from nnreg.registration.grids import resample_to
from nnreg.registration.normalization import match_histogram
from nnreg.registration.prealign import Prealignment, PrealignSettings, image_tensor, mask_on_grid, prealign
from nnreg.utilities.errors import ConfigurationError

if TYPE_CHECKING:
    from nnreg.inference.predictor import nnRegPredictor

logger = logging.getLogger(__name__)

# The deformable stage's defaults on a 2 mm working grid: the refinement that new 2 mm plans record, with 30 coarse
# steps instead of 60 (tuned with benchmarks/register.py --deformable-settings on perturbed training pairs of
# OpenBrains80, documentation/benchmarks.md: higher Dice with half the coarse steps). The 12 fine steps with the
# velocity on the working grid itself are most of the time; 3 integration steps, not 2, keep NDV lower. No warm-up:
# the fine stage's first Adam step at the full rate can undo the coarse result, and the stage then returns its start
# (all 12 steps on one 1 mm training pair); warmup_steps=3 makes them count but moved the exact Dice by 0 to +0.002
# on perturbed training pairs, inside their spread (twenty-third session, documentation/benchmarks.md).
DEFORMABLE = InstanceOptimization(steps=30, fine_steps=12, grid_factor=2, lambda_reg=1.5, integration_steps=3,
                                  fine_grid_factor=1)
# The finer-grid stage's defaults (a 1 mm image after the 2 mm working grid): the velocity resampled onto the 1 mm grid
# as well, so the last steps can move 1 mm detail (exact Dice +0.007 on perturbed training pairs of OpenBrains160,
# documentation/benchmarks.md); 2 integration steps at lr 0.4, and lambda 2 (not the working grid's 1.5) keeps NDV
# well below 0.01 %. 4 steps (6 until the ninth session) since the correction below follows them.
FINER_GRID = FinerGridSettings(steps=4, lr=0.4, finer_velocity=True, lambda_reg=2.0, integration_steps=2,
                               parametrisation="velocity", edge_kappa=None)
# Then a displacement correction on the same finer grid (nnreg_predict's 1 mm stage: exp(v) o (id + w), w optimised
# with lambda 8, :mod:`nnreg.inference.finer_grid`): the velocity moves what a smooth transform can, the correction
# the 1 mm detail left: exact Dice 0.700 -> 0.704, better on each of 4 perturbed training pairs of OpenBrains160
# (4 velocity steps + 8 correction steps; 6 + 8 gave the same, 2 + 8 0.697; documentation/benchmarks.md).
# Both take the deformable stage's edge_kappa (None; 0 by default): nnreg_predict's κ 0.1 was chosen for its own stage.
FINER_CORRECTION = FinerGridSettings(steps=8, lr=0.15, lambda_reg=8.0, parametrisation="displacement",
                                     edge_kappa=None)
# The finer grid ends at the fixed image's finest spacing, but not below this (mm) unless final_spacing asks for it: a
# 0.7 mm pair on a 0.67 mm grid took 126 s and 12.6 GB (2 cores), a 0.5 mm one would need ~30 GB; at 1 mm, LUMIR's
# grid, the same pair takes a third of the time and memory (documentation/benchmarks.md).
FINEST_DEFAULT_SPACING = 1.0

@dataclass(frozen=True)
class RegistrationSettings:
    """Everything ``nnreg_register`` can change."""

    working_spacing: float = 2.0
    affine: AffineSettings = AffineSettings()
    deformable: InstanceOptimization = DEFORMABLE
    histogram_matching: bool = True
    min_overlap: float = 0.5       # Dice of the two foregrounds needed after the affine stage (prealign)
    finer_grid: FinerGridSettings = FINER_GRID    # last steps on a finer grid (finer_grid_factor)
    correction: FinerGridSettings = FINER_CORRECTION  # then a displacement correction there (steps 0: off)
    final_spacing: float | None = None   # that grid's spacing; None: the fixed image's finest, at least 1 mm

    def prealign(self) -> PrealignSettings:
        return PrealignSettings(self.working_spacing, self.affine, self.histogram_matching, self.min_overlap)

    def correction_applies(self) -> bool:
        """Whether the displacement correction follows the finer-grid stage: only after a velocity stage (a
        displacement stage already is one)."""
        return self.correction.steps > 0 and self.finer_grid.parametrisation == "velocity"

    def finer_grid_factor(self, fixed_spacing: tuple[float, ...], coarse_spacing: float) -> int:
        """How many finer-grid voxels per refinement-grid voxel along each axis (1: no finer-grid stage): the
        refinement grid's spacing over the final spacing, rounded, when it is at least 1.5. The final spacing is
        ``final_spacing``, or the fixed image's finest spacing but not below :data:`FINEST_DEFAULT_SPACING`. The stage
        runs when it or the correction after it has steps (a correction alone goes on from the working grid's
        velocity)."""
        steps = self.finer_grid.steps + (self.correction.steps if self.correction_applies() else 0)
        if steps == 0 or not self.deformable.enabled or not finer_grid_applies(self.deformable):
            return 1
        final = self.final_spacing if self.final_spacing is not None else max(min(fixed_spacing),
                                                                              FINEST_DEFAULT_SPACING)
        ratio = coarse_spacing / final
        return int(round(ratio)) if ratio >= 1.5 else 1


@dataclass
class Registration:
    """The fitted transform on the working grid and a log of what was done."""

    affine: AffineResult
    working: Geometry                 # where ``field`` lives: the fixed working grid (or its finer subdivision)
    field: torch.Tensor               # (1, 3, H, W, D) voxel-unit pull field on ``working``
    fixed_working: torch.Tensor       # normalised fixed image on ``working``
    moving_affine: torch.Tensor       # normalised moving image on ``working`` after the affine stage
    overlap: float
    similarity: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def register_images(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray, moving_geometry: Geometry,
                    settings: RegistrationSettings = RegistrationSettings(), fixed_mask: np.ndarray | None = None,
                    moving_mask: np.ndarray | None = None, names: tuple[str, str] = ("fixed", "moving"),
                    predictor: "nnRegPredictor | None" = None) -> Registration:
    """Register ``moving`` to ``fixed`` (arrays with their geometries); see the module docstring. With a
    ``predictor`` (a trained model) its network starts the deformable stage (:mod:`nnreg.registration.network`)."""
    aligned = prealign(fixed, fixed_geometry, moving, moving_geometry, settings.prealign(), fixed_mask, moving_mask,
                       names)
    affine, log, overlap = aligned.affine, aligned.log, aligned.overlap
    f_geo, fixed_t, moving_affine = aligned.fixed_grid, aligned.fixed_working, aligned.moving_affine
    starts = {"identity": torch.zeros((1, 3, *f_geo.shape))}
    if predictor is not None and settings.deformable.enabled:
        from nnreg.registration.network import network_field, on_grid

        net_geo, net_field, lines = network_field(predictor, fixed, fixed_geometry, moving, moving_geometry, affine,
                                                  names)
        log.extend(lines)
        starts["network"] = on_grid(net_field, net_geo, f_geo)
    masks = _stage_masks(aligned.fixed_mask, aligned.moving_mask, aligned.moving_grid, f_geo, affine)
    chosen, field_w, report, similarity = _deformable(fixed_t, moving_affine, starts, settings.deformable, log, masks)
    registration = Registration(affine, f_geo, field_w, fixed_t, moving_affine, overlap, similarity, log)
    factor = settings.finer_grid_factor(fixed_geometry.spacing, settings.working_spacing)
    velocity = finer_grid_start(chosen, report, starts)
    if factor > 1 and velocity is None:
        log.append("finer grid: skipped (the kept field is the network's own, not a velocity to go on from)")
    elif factor > 1:
        registration = _finer_grid_stage(registration, velocity, factor, settings, aligned, fixed_geometry,
                                         moving_geometry)
    for line in log:
        logger.debug(line)
    return registration


def _stage_masks(fixed_mask: torch.Tensor | None, moving_mask: torch.Tensor | None, moving_grid: Geometry,
                 fixed_grid: Geometry, affine: AffineResult) -> SimilarityMasks:
    """The masks of a deformable stage on ``fixed_grid``: the fixed one as it is (on that grid), the moving one (on
    ``moving_grid``) through the affine, as the moving image the stage warps went through it."""
    if moving_mask is not None:
        with torch.no_grad():
            moving_mask = sample_affine(moving_mask, moving_grid, fixed_grid, torch.as_tensor(affine.homogeneous))
    return SimilarityMasks(fixed_mask, moving_mask)


def _deformable(fixed: torch.Tensor, moving: torch.Tensor, starts: dict[str, torch.Tensor],
                settings: InstanceOptimization, log: list[str], masks: SimilarityMasks | None = None
                ) -> tuple[str, torch.Tensor, RefinementReport, dict[str, float]]:
    """The deformable stage from each start (the identity; a trained model's field); the refinement kept is the one
    whose returned field does not fold beyond ``max_folding_percent``, then the one with the lower loss (similarity
    plus regulariser of the velocity, on the working grid: comparable because both starts optimise the whole
    transform, ``velocity_start="network"``; with a remapped last stage, each start is scored against its own
    remapped moving image, so the comparison is approximate). Why both: a network trained for a few minutes on other
    data can start the optimisation in a worse basin than the identity does (measured, documentation/benchmarks.md);
    the loss decides per pair, at the cost of a second refinement. A refused refinement returns its start, scored
    with the start standing in for its velocity."""
    if len(starts) > 1 and settings.velocity_start != "network":
        raise ConfigurationError("a deformable stage with a network start needs velocity_start='network' (with "
                                 "'zero' the two starts' regularisers measure different things)")
    results = {}
    for name, start in starts.items():
        began = time.perf_counter()
        field, report = refine_field(fixed, moving, start, settings, masks=masks)
        results[name] = field, report
        label = "deformable" if len(starts) == 1 else f"deformable from the {name}"
        if not settings.enabled:            # --affine-only: nothing was optimised, nothing was measured
            log.append(f"{label}: skipped (0 steps: the affine stage's transform alone)")
            continue
        measure = {"lncc": "local NCC", "mind": "MIND-SSC similarity"}.get(settings.similarity, settings.similarity)
        if report.remapped:                 # the last stage measured local NCC against the remapped moving image
            measure = "local NCC after remapping the moving contrast"
        log.append(f"{label}: {report.steps_run} steps, {measure} {-report.initial_ncc:.4f} -> "
                   f"{-report.final_ncc:.4f}, loss {report.final_loss:.4f}"
                   f"{' (start kept: ' + report.reason + ')' if report.kept_network else ''} "
                   f"({time.perf_counter() - began:.1f} s)")

    def rank(name: str) -> tuple[bool, float, bool]:
        report = results[name][1]
        return report.folding_percent > settings.max_folding_percent, report.final_loss, name != "network"

    chosen = min(results, key=rank)
    field, report = results[chosen]
    similarity = {"ncc_after_affine": -results["identity"][1].initial_ncc, "ncc_final": -report.final_ncc}
    if "network" in results:
        similarity["ncc_network"] = -results["network"][1].initial_ncc
        log.append(f"deformable: kept the refinement from the {chosen}"
                   f"{chr(39) + 's field' if chosen == 'network' else ''} (lower loss)")
    return chosen, field, report, similarity


def finer_grid_start(chosen: str, report: RefinementReport, starts: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The velocity the finer-grid stage goes on from: the kept refinement's; the identity's zeros when that
    refinement was refused (``exp(0)`` is its field); None when a refused network start was kept (its field is the
    network's own, which no velocity on the working grid reproduces exactly: the stage is skipped)."""
    if report.velocity is not None:
        return report.velocity
    return starts[chosen] if chosen == "identity" else None


def _finer_grid_stage(registration: Registration, velocity: torch.Tensor, factor: int,
                      settings: RegistrationSettings, aligned: Prealignment, fixed_geometry: Geometry,
                      moving_geometry: Geometry) -> Registration:
    """Go on from ``velocity`` (the refinement's, on ``registration.working``, the fixed working grid) with the
    similarity measured on that grid subdivided ``factor`` times, the moving image resampled
    through the affine onto it (:mod:`nnreg.inference.finer_grid`, the other settings the deformable stage's; the images
    normalised once, by :func:`prealign`); the registration then lives on the finer grid."""
    stage = time.perf_counter()
    fine_geo = subdivided_geometry(registration.working, factor)
    moving_fine_geo = subdivided_geometry(aligned.moving_grid, factor)
    fixed_img = resample_to(aligned.fixed_normalised, fixed_geometry, fine_geo)
    moving_img = resample_to(aligned.moving_normalised, moving_geometry, moving_fine_geo)
    if settings.histogram_matching:
        moving_img = match_histogram(moving_img, fixed_img)
    fixed_t, moving_t = image_tensor(fixed_img), image_tensor(moving_img)
    assert fixed_t is not None and moving_t is not None
    with torch.no_grad():
        moving_affine = sample_affine(moving_t, moving_fine_geo, fine_geo,
                                      torch.as_tensor(registration.affine.homogeneous))
    fixed_mask, moving_mask = (image_tensor(mask_on_grid(m, g, fine, name))
                               for m, g, fine, name in zip(aligned.masks, (fixed_geometry, moving_geometry),
                                                           (fine_geo, moving_fine_geo), ("fixed", "moving")))
    masks = _stage_masks(fixed_mask, moving_mask, moving_fine_geo, fine_geo, registration.affine)
    field, report = refine_on_finer_grid(fixed_t, moving_affine, velocity, settings.deformable, settings.finer_grid,
                                         masks=masks)
    similarity = {**registration.similarity, "ncc_finer_grid_start": -report.initial_ncc,
                  "ncc_finer_grid": -report.final_ncc}
    registration.log.append(
        f"finer grid {list(fine_geo.shape)} at {fine_geo.spacing[0]:g} mm: {report.steps_run} steps, local NCC "
        f"{-report.initial_ncc:.4f} -> {-report.final_ncc:.4f}"
        f"{' (kept the working grid field: ' + report.reason + ')' if report.kept_network else ''} "
        f"({time.perf_counter() - stage:.1f} s)")
    if settings.correction.steps > 0 and not settings.correction_applies():
        registration.log.append("correction: skipped (the finer-grid stage is a displacement correction itself)")
    elif settings.correction_applies() and report.velocity is not None:
        stage = time.perf_counter()
        # exp(v) as the velocity stage integrated it (its options), then w optimised with the correction's own
        field, report = refine_on_finer_grid(fixed_t, moving_affine, report.velocity,
                                             settings.finer_grid.options(settings.deformable), settings.correction,
                                             start_field=field, masks=masks)   # exp(v): the velocity stage's own
        similarity["ncc_finer_grid"] = -report.final_ncc
        registration.log.append(
            f"correction at {fine_geo.spacing[0]:g} mm: {report.steps_run} steps, local NCC "
            f"{-report.initial_ncc:.4f} -> {-report.final_ncc:.4f}"
            f"{' (kept the velocity stage field: ' + report.reason + ')' if report.kept_network else ''} "
            f"({time.perf_counter() - stage:.1f} s)")
    return Registration(registration.affine, fine_geo, field, fixed_t, moving_affine, registration.overlap,
                        similarity, registration.log)
