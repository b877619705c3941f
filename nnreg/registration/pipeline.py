"""Pairwise registration of two user images: normalise -> working grids -> affine -> deformable refinement from
the identity, or, with a trained model, from the network's field on the model's grid
(:mod:`nnreg.registration.network`).

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

from nnreg.alignment.affine import AffineResult, AffineSettings, register_affine
from nnreg.alignment.grids import working_geometry
from nnreg.alignment.sampling import sample_affine
from nnreg.dataset.image_io import Geometry
from nnreg.inference.instance_optimization import InstanceOptimization, refine_field
from nnreg.registration.grids import resample_to
from nnreg.registration.normalization import match_histogram, normalise
from nnreg.utilities.errors import NnregError

if TYPE_CHECKING:
    from nnreg.inference.predictor import nnRegPredictor

logger = logging.getLogger(__name__)

# The deformable stage's defaults on a 2 mm working grid: the refinement that new 2 mm plans record, with 30 coarse
# steps instead of 60 (tuned with benchmarks/register.py --deformable-settings on perturbed training pairs of
# OpenBrains80, documentation/benchmarks.md: higher Dice with half the coarse steps). The 12 fine steps with the
# velocity on the working grid itself are the accurate part and most of the time; 3 integration steps, not 2, keep
# NDV lower.
DEFORMABLE = InstanceOptimization(steps=30, fine_steps=12, grid_factor=2, lambda_reg=1.5, integration_steps=3,
                                  fine_grid_factor=1)
FOREGROUND = 0.05      # normalised intensity above which a voxel counts as anatomy for the overlap check


@dataclass(frozen=True)
class RegistrationSettings:
    """Everything ``nnreg_register`` can change."""

    working_spacing: float = 2.0
    affine: AffineSettings = AffineSettings()
    deformable: InstanceOptimization = DEFORMABLE
    histogram_matching: bool = True
    min_overlap: float = 0.5       # Dice of the two foregrounds needed after the affine stage


@dataclass
class Registration:
    """The fitted transform on the working grid and a log of what was done."""

    affine: AffineResult
    working: Geometry                 # where ``field`` lives: the fixed working grid, or the model's network grid
    field: torch.Tensor               # (1, 3, H, W, D) voxel-unit pull field on ``working``
    fixed_working: torch.Tensor       # normalised fixed image on ``working``
    moving_affine: torch.Tensor       # normalised moving image on ``working`` after the affine stage
    overlap: float
    similarity: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def check_image(array: np.ndarray, name: str) -> None:
    """One-line errors for a shape that cannot be registered (empty, constant and NaN images: :func:`normalise`)."""
    if array.ndim != 3:
        raise NnregError(f"expected a 3D image, found {array.ndim} dimension(s) {list(array.shape)}", name)
    if min(array.shape) < 2:
        raise NnregError(f"the image has fewer than 2 voxels along an axis {list(array.shape)}", name)


def _working_image(array: np.ndarray, geometry: Geometry, spacing: float, mask: np.ndarray | None,
                   name: str) -> tuple[Geometry, np.ndarray, np.ndarray | None]:
    working = working_geometry(geometry, spacing)
    image = resample_to(normalise(array, name), geometry, working)
    resampled_mask = None
    if mask is not None:
        if tuple(mask.shape) != tuple(geometry.shape):
            raise NnregError(f"the mask's shape {list(mask.shape)} is not the image's {list(geometry.shape)}", name)
        resampled_mask = (resample_to((mask > 0).astype(np.float32), geometry, working) > 0.5).astype(np.float32)
    return working, image, resampled_mask


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def foreground_overlap(fixed: torch.Tensor, moving: torch.Tensor) -> float:
    """Dice of the voxels above :data:`FOREGROUND` (two brains after a good affine: about 0.9; an orientation or
    field of view the affine cannot resolve, e.g. a slab against a whole brain: far lower)."""
    f, m = fixed > FOREGROUND, moving > FOREGROUND
    total = int(f.sum()) + int(m.sum())
    return 2.0 * float((f & m).sum()) / total if total else 0.0


def register_images(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray, moving_geometry: Geometry,
                    settings: RegistrationSettings = RegistrationSettings(), fixed_mask: np.ndarray | None = None,
                    moving_mask: np.ndarray | None = None, names: tuple[str, str] = ("fixed", "moving"),
                    predictor: "nnRegPredictor | None" = None) -> Registration:
    """Register ``moving`` to ``fixed`` (arrays with their geometries); see the module docstring. With a
    ``predictor`` (a trained model) its network starts the deformable stage (:mod:`nnreg.registration.network`)."""
    log: list[str] = []
    began = time.perf_counter()
    check_image(fixed, names[0])
    check_image(moving, names[1])
    f_geo, f_img, f_mask = _working_image(fixed, fixed_geometry, settings.working_spacing, fixed_mask, names[0])
    m_geo, m_img, m_mask = _working_image(moving, moving_geometry, settings.working_spacing, moving_mask, names[1])
    if settings.histogram_matching:
        m_img = match_histogram(m_img, f_img)
    log.append(f"working grids: fixed {list(f_geo.shape)}, moving {list(m_geo.shape)} at {settings.working_spacing} mm "
               f"({time.perf_counter() - began:.1f} s)")
    fixed_t, moving_t = _tensor(f_img), _tensor(m_img)
    assert fixed_t is not None and moving_t is not None
    stage = time.perf_counter()
    affine = register_affine(fixed_t, f_geo, moving_t, m_geo, settings.affine, _tensor(f_mask), _tensor(m_mask))
    log.extend(affine.log)
    log.append(f"affine: {affine.describe()} ({time.perf_counter() - stage:.1f} s)")
    with torch.no_grad():
        moving_affine = sample_affine(moving_t, m_geo, f_geo, torch.as_tensor(affine.homogeneous))
    overlap = foreground_overlap(fixed_t, moving_affine)
    log.append(f"foreground overlap (Dice) after the affine stage: {overlap:.2f}")
    if overlap < settings.min_overlap:
        raise NnregError(f"the images overlap only {overlap:.0%} after the affine stage (at least "
                         f"{settings.min_overlap:.0%} needed): check the orientation and field of view", names[1])
    if predictor is not None and settings.deformable.enabled:
        from nnreg.registration.network import network_stage

        net_geo, field_n, fixed_n, moving_n, similarity, lines = network_stage(
            predictor, fixed, fixed_geometry, moving, moving_geometry, affine, names)
        log.extend(lines)
        for line in log:
            logger.debug(line)
        return Registration(affine, net_geo, field_n, fixed_n, moving_n, overlap, similarity, log)
    stage = time.perf_counter()
    zero = torch.zeros((1, 3, *f_geo.shape))
    field_w, report = refine_field(fixed_t, moving_affine, zero, settings.deformable)
    similarity = {"ncc_after_affine": -report.initial_ncc, "ncc_final": -report.final_ncc}
    log.append(f"deformable: {report.steps_run} steps, local NCC {similarity['ncc_after_affine']:.4f} -> "
               f"{similarity['ncc_final']:.4f} ({time.perf_counter() - stage:.1f} s)")
    for line in log:
        logger.debug(line)
    return Registration(affine, f_geo, field_w, fixed_t, moving_affine, overlap, similarity, log)
