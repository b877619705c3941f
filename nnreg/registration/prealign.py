"""The affine pre-alignment of two images as one reusable step: normalise both, put them on working grids, fit the
affine (:func:`nnreg.alignment.affine.register_affine`) and check that the foregrounds then overlap.

Conventions: see :mod:`nnreg.alignment.grids` (LPS mm, ``(i, j, k)`` arrays). The fitted ``T``
(:attr:`AffineResult.homogeneous`) maps a **fixed** physical point to the **moving** physical point it is sampled
from (pull, ITK's ``Resample(moving, fixed, T)``). Working grids: each image's own physical box, canonically oriented,
at ``working_spacing`` mm (:func:`nnreg.alignment.grids.working_geometry`).

It lives in :mod:`nnreg.registration` (not :mod:`nnreg.alignment`) because it uses this package's normalisation and
resampling: imported from here, ``nnreg.registration.pipeline`` can use it without an import cycle. Used by
``nnreg_predict --affine`` (:mod:`nnreg.inference.affine_stage`); ``nnreg_register``'s pipeline does the same steps.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from nnreg.alignment.affine import AffineResult, AffineSettings, register_affine
from nnreg.alignment.grids import working_geometry
from nnreg.alignment.sampling import sample_affine
from nnreg.dataset.image_io import Geometry
from nnreg.registration.grids import resample_to
from nnreg.registration.normalization import match_histogram, normalise
from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)

FOREGROUND = 0.05      # normalised intensity above which a voxel counts as anatomy for the overlap check


@dataclass(frozen=True)
class PrealignSettings:
    """What the affine pre-alignment can change (``nnreg_register``'s defaults)."""

    working_spacing: float = 2.0
    affine: AffineSettings = AffineSettings()
    histogram_matching: bool = True    # same contrast: match the moving histogram to the fixed one (off for MI)
    min_overlap: float = 0.5           # Dice of the two foregrounds needed after the affine stage


@dataclass
class Prealignment:
    """The fitted affine and the images it was fitted on (small: working grids)."""

    affine: AffineResult
    overlap: float                     # foreground Dice after the affine stage
    fixed_grid: Geometry               # the fixed working grid
    moving_grid: Geometry              # the moving working grid
    fixed_working: torch.Tensor        # (1, 1, ...) normalised fixed image on ``fixed_grid``
    moving_working: torch.Tensor       # (1, 1, ...) normalised (histogram-matched) moving image on ``moving_grid``
    moving_affine: torch.Tensor        # ``moving_working`` through ``T`` on ``fixed_grid``
    fixed_normalised: np.ndarray       # the normalised images on their own grids (for stages at full resolution)
    moving_normalised: np.ndarray
    log: list[str] = field(default_factory=list)
    fixed_mask: torch.Tensor | None = None    # (1, 1, ...) binary masks on the working grids (None: not given)
    moving_mask: torch.Tensor | None = None
    masks: tuple[np.ndarray | None, np.ndarray | None] = (None, None)   # the same on the images' own grids


def check_image(array: np.ndarray, name: str) -> None:
    """One-line errors for a shape that cannot be registered (empty, constant and NaN images: :func:`normalise`)."""
    if array.ndim != 3:
        raise NnregError(f"expected a 3D image, found {array.ndim} dimension(s) {list(array.shape)}", name)
    if min(array.shape) < 2:
        raise NnregError(f"the image has fewer than 2 voxels along an axis {list(array.shape)}", name)


def foreground_overlap(fixed: torch.Tensor, moving: torch.Tensor) -> float:
    """Dice of the voxels above :data:`FOREGROUND` (two brains after a good affine: about 0.9; an orientation or
    field of view the affine cannot resolve, e.g. a slab against a whole brain: far lower)."""
    f, m = fixed > FOREGROUND, moving > FOREGROUND
    total = int(f.sum()) + int(m.sum())
    return 2.0 * float((f & m).sum()) / total if total else 0.0


def image_tensor(array: np.ndarray | None) -> torch.Tensor | None:
    """A 3D array as a float32 ``(1, 1, H, W, D)`` tensor (None stays None)."""
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def mask_on_grid(mask: np.ndarray | None, geometry: Geometry, working: Geometry, name: str) -> np.ndarray | None:
    """A binary mask (on ``geometry``) on the grid ``working`` (None stays None)."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(geometry.shape):
        raise NnregError(f"the mask's shape {list(mask.shape)} is not the image's {list(geometry.shape)}", name)
    return (resample_to((mask > 0).astype(np.float32), geometry, working) > 0.5).astype(np.float32)


def prealign(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray, moving_geometry: Geometry,
             settings: PrealignSettings = PrealignSettings(), fixed_mask: np.ndarray | None = None,
             moving_mask: np.ndarray | None = None, names: tuple[str, str] = ("fixed", "moving")) -> Prealignment:
    """Fit ``T`` (fixed -> moving physical, see the module doc) to two raw images on their own grids; a one-line
    :class:`NnregError` naming the moving image when the foregrounds overlap less than ``min_overlap`` after it."""
    began = time.perf_counter()
    check_image(fixed, names[0])
    check_image(moving, names[1])
    f_geo = working_geometry(fixed_geometry, settings.working_spacing)
    m_geo = working_geometry(moving_geometry, settings.working_spacing)
    fixed_n, moving_n = normalise(fixed, names[0]), normalise(moving, names[1])
    f_img = resample_to(fixed_n, fixed_geometry, f_geo)
    m_img = resample_to(moving_n, moving_geometry, m_geo)
    if settings.histogram_matching:
        m_img = match_histogram(m_img, f_img)
    log = [f"working grids: fixed {list(f_geo.shape)}, moving {list(m_geo.shape)} at {settings.working_spacing} mm "
           f"({time.perf_counter() - began:.1f} s)"]
    fixed_t, moving_t = image_tensor(f_img), image_tensor(m_img)
    assert fixed_t is not None and moving_t is not None
    stage = time.perf_counter()
    fixed_mask_t = image_tensor(mask_on_grid(fixed_mask, fixed_geometry, f_geo, names[0]))
    moving_mask_t = image_tensor(mask_on_grid(moving_mask, moving_geometry, m_geo, names[1]))
    affine = register_affine(fixed_t, f_geo, moving_t, m_geo, settings.affine, fixed_mask_t, moving_mask_t)
    log.extend(affine.log)
    log.append(f"affine: {affine.describe()} ({settings.affine.similarity}, {time.perf_counter() - stage:.1f} s)")
    with torch.no_grad():
        moving_affine = sample_affine(moving_t, m_geo, f_geo, torch.as_tensor(affine.homogeneous))
    overlap = foreground_overlap(fixed_t, moving_affine)
    log.append(f"foreground overlap (Dice) after the affine stage: {overlap:.2f}")
    for line in log:
        logger.debug(line)
    if overlap < settings.min_overlap:
        raise NnregError(f"the images overlap only {overlap:.0%} after the affine stage (at least "
                         f"{settings.min_overlap:.0%} needed): check the orientation and field of view", names[1])
    masks = tuple(None if m is None else (m > 0).astype(np.float32) for m in (fixed_mask, moving_mask))
    given = [f"{side} mask ({int(m.sum())} voxels)" for side, m in zip(("fixed", "moving"), masks) if m is not None]
    if given:
        log.append(f"similarity of every stage restricted to the {' and the '.join(given)}")
    return Prealignment(affine, overlap, f_geo, m_geo, fixed_t, moving_t, moving_affine, fixed_n, moving_n, log,
                        fixed_mask_t, moving_mask_t, masks)                               # type: ignore[arg-type]
