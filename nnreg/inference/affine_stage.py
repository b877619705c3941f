"""``nnreg_predict --affine``: an affine pre-alignment of each pair before the network, for pairs that are not
aligned in physical space.

Conventions: see :mod:`nnreg.alignment.grids` (LPS mm, ``(i, j, k)`` arrays) and :mod:`nnreg.inference.export` (the
challenge field). Per pair:

1. ``T`` (fixed -> moving physical, pull) is fitted by :func:`nnreg.registration.prealign.prealign` (local NCC for
   the same modality, mutual information when the LUMIR modality suffixes differ, as ``nnreg_register`` chooses);
2. the raw moving image is resampled through ``T`` onto the fixed image's own grid
   (:func:`nnreg.registration.network.affine_on_fixed_grid`) and the pair (fixed, moving∘T) is prepared and predicted
   as usual (network and refinement): ``u_net``, voxels of the fixed grid;
3. the written field is the **whole** transform in the challenge layout on the fixed grid, pointing into the moving
   image's own voxels: ``u(x) = idx_m(T(phys_f(x + u_net(x)))) - x`` (float64 inside, :func:`compose_affine`), so
   ``warped(x) = moving(x + u(x))`` with the original moving image, as ``nnreg_register``'s field.

The fitted transform and what the stage did are written to ``affine/<field name>.json`` (:func:`affine_record`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnreg.alignment.affine import AffineResult, AffineSettings
from nnreg.alignment.grids import index_to_physical, physical_to_index, voxel_centres
from nnreg.dataset.image_io import Geometry, read_image
from nnreg.dataset.naming import challenge_id_and_modality
from nnreg.evaluation.warp import sample_coordinates
from nnreg.inference.instance_optimization import InstanceOptimization
from nnreg.inference.inverse import invert_field
from nnreg.inference.predictor import nnRegPredictor
from nnreg.inference.preparation import PreparedPair, prepare_arrays
from nnreg.inference.resample import same_grid
from nnreg.planning.plans import ConfigurationPlan
from nnreg.registration.network import affine_on_fixed_grid
from nnreg.registration.prealign import PrealignSettings, prealign
from nnreg.registration.run import AFFINE_SIMILARITY
from nnreg.registration.transforms import apply_matrix
from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)


@dataclass
class AlignedPair:
    """A pair prepared after the affine stage: the network inputs of (fixed, moving∘T) and what the composition and
    the export need (picklable: reader workers return it)."""

    prepared: PreparedPair           # moving_on_fixed = the moving image through T on the fixed grid
    affine: AffineResult
    overlap: float                   # foreground Dice after the affine stage
    similarity: str                  # the affine stage's similarity ("ncc" or "mi")
    log: list[str]
    moving: np.ndarray               # the original moving image on its own grid (the field points into it)
    moving_geometry: Geometry


def affine_settings(fixed: str | Path, moving: str | Path) -> PrealignSettings:
    """``nnreg_register``'s choice by the LUMIR modality suffixes: local NCC (and histogram matching) for one
    modality, mutual information (no histogram matching) when they differ."""
    different = challenge_id_and_modality(fixed)[1] != challenge_id_and_modality(moving)[1]
    similarity = AFFINE_SIMILARITY["mind" if different else "lncc"]
    return PrealignSettings(affine=AffineSettings(similarity=similarity), histogram_matching=not different)


def align_arrays(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray, moving_geometry: Geometry,
                 config: ConfigurationPlan, settings: PrealignSettings = PrealignSettings(),
                 names: tuple[str, str] = ("fixed image", "moving image")) -> AlignedPair:
    """Fit ``T`` to the pair, then prepare (fixed, moving∘T) for the network (module doc, steps 1-2)."""
    found = prealign(fixed, fixed_geometry, moving, moving_geometry, settings, names=names)
    moving_affine = affine_on_fixed_grid(moving, moving_geometry, fixed_geometry, found.affine)
    prepared = prepare_arrays(fixed, moving_affine, config, fixed_geometry, fixed_geometry, names[0], names[1])
    return AlignedPair(prepared, found.affine, found.overlap, settings.affine.similarity, found.log,
                       np.ascontiguousarray(moving, dtype=np.float32), moving_geometry)


def align_files(fixed_path: str | Path, moving_path: str | Path, config: ConfigurationPlan) -> AlignedPair:
    """Read a pair of image files and :func:`align_arrays` it (runs in reader workers)."""
    fixed, fixed_geometry = read_image(fixed_path)
    moving, moving_geometry = read_image(moving_path)
    return align_arrays(fixed, fixed_geometry, moving, moving_geometry, config,
                        affine_settings(fixed_path, moving_path), (str(fixed_path), str(moving_path)))


def compose_affine(field: np.ndarray, fixed: Geometry, moving: Geometry, transform: np.ndarray) -> np.ndarray:
    """``idx_m(T(phys_f(x + u(x)))) - x`` for a fixed-grid voxel-unit field ``u`` ``(H, W, D, 3)`` and the 4x4
    physical pull ``T``: the whole transform in the moving image's voxels, computed in float64, float32 out.

    The same transform as ``nnreg_register``'s :func:`nnreg.registration.transforms.forward_on_fixed_grid` with the
    deformable part ``d = Direction diag(spacing) u`` given on the fixed grid itself."""
    matrix = physical_to_index(moving) @ np.asarray(transform, dtype=np.float64) @ index_to_physical(fixed)
    with torch.no_grad():
        points = torch.from_numpy(sample_coordinates(field)).permute(1, 2, 3, 0)   # x + u(x), float64
        moved = apply_matrix(matrix, points)
        del points
        identity = Geometry(tuple(fixed.shape), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        moved -= torch.from_numpy(voxel_centres(identity))
        return np.ascontiguousarray(moved.float().numpy())


def predict_aligned(predictor: nnRegPredictor, aligned: AlignedPair,
                    settings: InstanceOptimization | None = None) -> np.ndarray:
    """The whole-transform challenge field of an aligned pair: the predictor's field of (fixed, moving∘T), refined
    with ``settings`` (default: those in effect), composed with ``T`` (module doc, step 3)."""
    field = predictor.predict_prepared(aligned.prepared, settings)
    return compose_affine(field, aligned.prepared.fixed_geometry, aligned.moving_geometry, aligned.affine.homogeneous)


def affine_inverse(field: np.ndarray, aligned: AlignedPair, name: str) -> np.ndarray:
    """``--inverse`` with ``--affine``: the fixed-point inverse of the whole field (started from ``-u``; the network's
    velocity inverse does not include ``T``). Needs the two images on one grid, as ``--inverse`` always does."""
    if not same_grid(aligned.prepared.fixed_geometry, aligned.moving_geometry):
        raise NnregError("--inverse needs the moving image on the fixed image's grid (same shape, spacing, origin "
                         "and direction); this pair's grids differ", name)
    inverse, report = invert_field(field)
    logger.info("%s: %s (fixed-point inversion of the field with the affine)", name, report.describe())
    return inverse


def affine_record(aligned: AlignedPair, fixed: str | Path, moving: str | Path) -> dict[str, Any]:
    """What the affine stage did, for ``affine/<field name>.json``: ``homogeneous`` is ``T`` (4x4, fixed -> moving
    LPS mm, pull; ITK's ``AffineTransform`` with ``centre``, ``matrix``, ``translation``)."""
    affine = aligned.affine
    return {"fixed": str(fixed), "moving": str(moving), "similarity": aligned.similarity,
            "description": affine.describe(), "overlap": aligned.overlap,
            "homogeneous": affine.homogeneous.tolist(), "matrix": affine.matrix.tolist(),
            "centre": affine.centre.tolist(), "translation": affine.translation.tolist(),
            "final_loss": affine.similarity, "log": list(aligned.log)}
