"""The deformable stage started by a trained model: after the affine stage, both images go onto the model's
network grid exactly as ``nnreg_predict`` prepares a pair, the network predicts, and the predictor's own refinement
(the plans' ``instance_optimization``, which starts from the network's field) finishes.

Conventions: see :mod:`nnreg.registration.pipeline`. The moving image is resampled through the affine ``T`` onto
the fixed image's own grid (raw intensities, trilinear, 0 outside), then both are normalised with the model's
scheme and put on the network grid (:func:`nnreg.inference.preparation.prepare_arrays`, which also standardises an
image in foreign units). The network grid is a physical grid of its own (:func:`network_geometry`: the fixed
grid's axes at the planned spacing, the planned box), so the field it returns is the deformable part ``u`` of the
registration on that grid and the outputs compose it with ``T`` in physical space like the model-free path's.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from nnreg.alignment.affine import AffineResult
from nnreg.alignment.grids import index_to_physical
from nnreg.alignment.sampling import sample_affine
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


def network_stage(predictor: nnRegPredictor, fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
                  moving_geometry: Geometry, affine: AffineResult, names: tuple[str, str]
                  ) -> tuple[Geometry, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float], list[str]]:
    """(network grid, field ``(1, 3, *shape)`` on it, fixed and moving network inputs ``(1, 1, *shape)``,
    similarity, log lines) of the model-started deformable stage."""
    began = time.perf_counter()
    moving_affine = affine_on_fixed_grid(moving, moving_geometry, fixed_geometry, affine)
    prepared = prepare_arrays(fixed, moving_affine, predictor.configuration, fixed_geometry, fixed_geometry,
                              names[0], names[1])
    geometry = network_geometry(fixed_geometry, prepared.mapping)
    log = [f"network grid: {list(geometry.shape)} at {[round(s, 3) for s in geometry.spacing]} mm "
           f"({time.perf_counter() - began:.1f} s)"]
    stage = time.perf_counter()
    network_field = predictor.predict_network_grid(prepared.fixed_network, prepared.moving_network, refine=False)
    log.append(f"network: {predictor.configuration_name}, fold(s) {', '.join(predictor.folds)} "
               f"({time.perf_counter() - stage:.1f} s)")
    stage = time.perf_counter()
    field = predictor.refine(prepared.fixed_network, prepared.moving_network, network_field)
    report = predictor.last_refinement
    similarity: dict[str, float] = {}
    if report is not None:
        similarity = {"ncc_network": -report.initial_ncc, "ncc_final": -report.final_ncc}
        log.append(f"deformable (from the network's field): {report.steps_run} steps, similarity "
                   f"{similarity['ncc_network']:.4f} -> {similarity['ncc_final']:.4f}"
                   f"{' (network kept: ' + report.reason + ')' if report.kept_network else ''} "
                   f"({time.perf_counter() - stage:.1f} s)")
    else:
        log.append("deformable: the network's field (the model's plans record no refinement)")
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
    return geometry, field.float().cpu(), tensor(prepared.fixed_network), tensor(prepared.moving_network), \
        similarity, log
