"""The inverse (moving <- fixed) field of a prediction, for ``nnreg_predict --inverse``.

Conventions: the forward field is the challenge field, float32 ``(H, W, D, 3)`` voxel-unit pull field on the fixed
grid (``warped(x) = moving(x + u(x))``); the inverse ``w`` is the same layout with ``fixed(y + w(y))`` the fixed image
warped onto the moving image. It is written on the moving grid, which must be the fixed grid (Learn2Reg pairs share
one); see :mod:`nnreg.spatial.inverse` for the maths.

How it is computed: for a composition cascade of integrated velocities (``CascadeRegNet`` with ``cascade="compose"``,
``integration_steps >= 1`` and no bilateral filter on the accumulated field) the network's own velocities give the
inverse exactly as the reversed composition of ``exp(-v)`` (:func:`nnreg.spatial.cascade_inverse`), per fold, averaged
like the forward fields. That estimate (else ``-u``) is then refined by the fixed-point inversion against the final
original-grid field, so folds, resampling and any later refinement of the field are accounted for. The
inverse-consistency error (mean and max, voxels) is logged per pair.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from nnreg.inference.preparation import PreparedPair
from nnreg.inference.resample import same_grid
from nnreg.networks.output import RegistrationOutput
from nnreg.spatial import InverseConsistency, cascade_inverse, inverse_consistency, invert_displacement
from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)

FIXED_POINT_ITERATIONS = 50


def velocity_inverse(network: torch.nn.Module, output: RegistrationOutput) -> torch.Tensor | None:
    """The cascade's inverse ``(B, 3, *shape)`` from ``output``'s velocities, or None when the network's field is not
    a plain composition of exponentials (other networks, ``cascade="add"``, no integration, a filtered field)."""
    config = getattr(network, "config", None)
    if getattr(network, "network_class", None) != "CascadeRegNet" or not isinstance(config, dict):
        return None
    steps = int(config.get("integration_steps", 0))
    if config.get("cascade") != "compose" or steps < 1 or not output.levels:
        return None
    if config.get("bilateral_filter") and config.get("bilateral_on", "field") == "field":
        return None
    return cascade_inverse([level.velocity for level in output.levels], steps, output.displacement.shape[2:])


def _to_torch(field: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32)).permute(3, 0, 1, 2)[None]


def invert_field(field: np.ndarray, initial: np.ndarray | None = None,
                 iterations: int = FIXED_POINT_ITERATIONS) -> tuple[np.ndarray, InverseConsistency]:
    """The inverse of an original-grid ``(H, W, D, 3)`` field and its inverse-consistency error.

    ``initial`` (same layout, e.g. the velocity inverse mapped to the original grid) starts the fixed-point iteration
    (default ``-u``); every voxel keeps its best iterate.
    """
    u = _to_torch(field)
    start = _to_torch(initial) if initial is not None else None
    w = invert_displacement(u, start, iterations=iterations)
    report = inverse_consistency(u, w)
    return np.ascontiguousarray(w[0].permute(1, 2, 3, 0).numpy(), dtype=np.float32), report


def pair_inverse(field: np.ndarray, pair: PreparedPair, network_inverse: torch.Tensor | None = None,
                 name: str = "moving image",
                 iterations: int = FIXED_POINT_ITERATIONS) -> tuple[np.ndarray, InverseConsistency]:
    """The inverse of a predicted pair's original-grid ``field``; ``network_inverse`` is the predictor's
    ``last_velocity_inverse`` (network grid) or None. One-line error when the moving grid is not the fixed grid."""
    if not same_grid(pair.fixed_geometry, pair.moving_geometry):
        raise NnregError("--inverse needs the moving image on the fixed image's grid (same shape, spacing, origin "
                         "and direction); this pair's grids differ", name)
    initial = pair.mapping.field_to_original(network_inverse[0].numpy()) if network_inverse is not None else None
    inverse, report = invert_field(field, initial, iterations)
    logger.info("%s: %s%s", name, report.describe(),
                "" if initial is not None else " (fixed-point inversion, no velocity estimate)")
    return inverse, report
