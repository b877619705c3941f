"""Spatial operations on images and displacement fields — the conventions every part of nnreg relies on.

Conventions (binding for the whole package):

* Tensors are ``(B, C, H, W, D)`` where ``H, W, D`` are the array axes ``(i, j, k)`` exactly as nibabel loads the
  image. No axis is ever reversed in stored data.
* A displacement field is ``(B, 3, H, W, D)``; channel ``c`` is the displacement along array axis ``c`` in **voxel
  units** of the grid it lives on.
* Fields are **pull** (backward) fields on the fixed grid: ``warped(x) = moving(x + u(x))``. This is the Learn2Reg /
  LUMIR challenge format: ``u[0].permute(1, 2, 3, 0)`` is the ``(H, W, D, 3)`` array the evaluator reads, no
  conversion needed. The transformation is ``phi(x) = x + u(x)``.
* Composition ``(u o v)(x) = v(x) + u(x + v(x))``: warping by ``u o v`` equals warping by ``u`` and then by ``v``.
* Sampling is linear interpolation between voxel centres (``align_corners=True`` in ``grid_sample``), identical to
  ``scipy.ndimage.map_coordinates`` at integer voxel indices. Padding ``"zeros"`` equals scipy's
  ``mode="grid-constant"`` (interpolation towards 0 outside), ``"border"`` equals ``mode="nearest"``. Fields are
  always resampled with ``"border"`` (a field is extrapolated by its edge value, not by zero).
* Grids of different resolution are aligned with voxel centres at ``(i + 0.5) * spacing`` (``align_corners=False``),
  as in nnreg's preprocessing; :func:`resize_field` rescales vectors per axis by the ratio of sizes.
* Grids, integration, composition, warps and resizing compute in float32 (float64 for float64 inputs) whatever the
  input dtype and the autocast context (:mod:`nnreg.spatial.precision`); fields come back float32, :func:`warp`
  returns the image's dtype.
"""
from nnreg.spatial.fields import compose, integrate_velocity, resize_field, upsample_field
from nnreg.spatial.grid import clear_grid_cache, identity_grid, sampling_grid
from nnreg.spatial.inverse import InverseConsistency, cascade_inverse, inverse_consistency, invert_displacement
from nnreg.spatial.jacobian import jacobian_determinant
from nnreg.spatial.warp import warp

__all__ = [
    "warp",
    "integrate_velocity",
    "compose",
    "resize_field",
    "upsample_field",
    "jacobian_determinant",
    "identity_grid",
    "sampling_grid",
    "clear_grid_cache",
    "invert_displacement",
    "cascade_inverse",
    "inverse_consistency",
    "InverseConsistency",
]
