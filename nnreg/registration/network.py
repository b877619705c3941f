"""A trained model's start for the deformable stage: after the affine stage, both images go onto the model's
network grid exactly as ``nnreg_predict`` prepares a pair, the network predicts, and its field is carried onto the
fixed working grid, where ``nnreg_register``'s own deformable stage starts from it (and from the identity: the
pipeline keeps the start whose refinement reaches the lower loss, :mod:`nnreg.registration.pipeline`).

Conventions: see :mod:`nnreg.registration.pipeline`. The moving image is resampled through the affine ``T`` onto
the fixed image's own grid (raw intensities, trilinear, 0 outside), then both are normalised with the model's
scheme and put on the network grid (:func:`nnreg.inference.preparation.prepare_arrays`, which also standardises an
image in foreign units). The network grid is a physical grid of its own (:func:`network_geometry`: the fixed
grid's axes at the planned spacing, the planned box), so the field it returns is a deformable part ``d`` (mm,
``p -> p + d(p)`` before ``T``) that any other grid of the fixed image's space samples (:func:`on_grid`: trilinear,
edge values outside the box, as nnreg resamples fields).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from nnreg.alignment.affine import AffineResult
from nnreg.alignment.grids import index_to_physical, voxel_centres
from nnreg.alignment.sampling import millimetre_field, sample_affine, sample_field_at
from nnreg.dataset.image_io import Geometry
from nnreg.inference.predictor import nnRegPredictor
from nnreg.inference.preparation import prepare_arrays
from nnreg.preprocessing.grid import GridMapping

logger = logging.getLogger(__name__)


def network_geometry(fixed: Geometry, mapping: GridMapping) -> Geometry:
    """The physical grid of the network box: voxel ``p`` is the fixed grid's index ``(p + c + 0.5) f - 0.5``."""
    first = np.array([(c + 0.5) * f - 0.5 for c, f in zip(mapping.crop_start, mapping.factor)])
    origin = index_to_physical(fixed) @ np.append(first, 1.0)
    return Geometry(tuple(int(s) for s in mapping.shape),
                    tuple(float(s) * float(f) for s, f in zip(fixed.spacing, mapping.factor)),  # type: ignore[arg-type]
                    tuple(float(o) for o in origin[:3]), tuple(float(d) for d in fixed.direction))


def affine_on_fixed_grid(moving: np.ndarray, moving_geometry: Geometry, fixed_geometry: Geometry,
                         affine: AffineResult) -> np.ndarray:
    """The raw moving image at ``T(p)`` for every voxel ``p`` of the fixed grid (trilinear, 0 outside)."""
    image = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    with torch.no_grad():
        out = sample_affine(image, moving_geometry, fixed_geometry, torch.as_tensor(affine.homogeneous))
    return np.ascontiguousarray(out[0, 0].numpy())


def network_field(predictor: nnRegPredictor, fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
                  moving_geometry: Geometry, affine: AffineResult, names: tuple[str, str]
                  ) -> tuple[Geometry, torch.Tensor, list[str]]:
    """(network grid, the network's field ``(1, 3, *shape)`` on it in its voxels, log lines); no refinement."""
    began = time.perf_counter()
    moving_affine = affine_on_fixed_grid(moving, moving_geometry, fixed_geometry, affine)
    prepared = prepare_arrays(fixed, moving_affine, predictor.configuration, fixed_geometry, fixed_geometry,
                              names[0], names[1])
    geometry = network_geometry(fixed_geometry, prepared.mapping)
    log = [f"network grid: {list(geometry.shape)} at {[round(s, 3) for s in geometry.spacing]} mm "
           f"({time.perf_counter() - began:.1f} s)"]
    stage = time.perf_counter()
    field = predictor.predict_network_grid(prepared.fixed_network, prepared.moving_network, refine=False)
    log.append(f"network: {predictor.configuration_name}, fold(s) {', '.join(predictor.folds)} "
               f"({time.perf_counter() - stage:.1f} s)")
    return geometry, field.float().cpu(), log


def on_grid(field: torch.Tensor, geometry: Geometry, target: Geometry) -> torch.Tensor:
    """A voxel-unit field ``(1, 3, ...)`` on ``geometry`` as the same physical displacement on ``target`` (a grid of
    the same space), in ``target``'s voxels ``(1, 3, *target.shape)``."""
    sampled = sample_field_at(millimetre_field(field.double(), geometry), geometry,
                              torch.from_numpy(voxel_centres(target)))                      # (..., 3) mm
    to_voxels = torch.linalg.inv(torch.as_tensor(index_to_physical(target)[:3, :3], dtype=torch.float64))
    return torch.einsum("rc,...c->r...", to_voxels, sampled).unsqueeze(0).float().contiguous()
