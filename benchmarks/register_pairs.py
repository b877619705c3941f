"""The perturbed pairs of ``benchmarks/register.py``: a documented, seeded generator (reproducible by seed).

A pair ``(fixed, moving)`` of one dataset (same grid) becomes ``(fixed, moving')`` with

    moving'(p) = moving(S(p)),    S(p) = A(p + w(p))     (physical LPS mm, a pull as ITK's Resample)

* ``A``: a random affine about the moving image's voxel-box centre ``c``, ``A(q) = R K (q - c) + c + t``, with
  ``R`` the rotations about the three axes (each angle uniform in ``±rotation`` degrees, applied x then y then z),
  ``K = diag(k)`` with each scale uniform in ``1 ± scale``, ``t`` uniform in ``±shift`` mm per axis;
* ``w``: a smooth warp: i.i.d. normal vectors on a control grid of ``WARP_CONTROL_MM`` spacing over the image box,
  Gaussian-smoothed (σ = 1 control point), scaled so that the largest vector is ``warp`` mm, and interpolated
  linearly in between (ITK ``DisplacementFieldTransform``); ``warp <= WARP_CONTROL_MM / 2`` keeps it invertible.

The one ITK transform ``S`` resamples the moving image (linear), its label map and its landmark volume (nearest
neighbour, as the Learn2Reg evaluator warps labels) onto the moving image's own grid, so the ground truth stays
consistent: a field that maps the fixed image onto ``moving'`` is scored against ``labels'`` exactly as the
original field would be against the original labels. Every draw comes from ``numpy.random.default_rng([seed,
index])`` (one stream per pair, in a fixed order: angles, scales, shift, warp, then the scanner effects), so a pair is
reproducible from the seed and its index alone.

The **scanner** set gives ``moving'`` another scanner's intensities (geometry untouched, drawn after the geometry):
:func:`nnreg.example.contrast.apply_acquisition` with :data:`SCANNER` (a smooth multiplicative bias field in
``1 ± 0.3``, gamma 0.7, Rician-like noise at 3 % of the brain's 99th percentile) and units ``×4`` of the original
image's (``scale`` = 4 × the original brain's 99th percentile).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, map_coordinates

from nnreg.dataset.image_io import Geometry
from nnreg.example.contrast import Acquisition, apply_acquisition
from nnreg.inference.resample import to_sitk

WARP_CONTROL_MM = 16.0
SCANNER = Acquisition(bias=0.3, gamma=0.7, noise=0.03, scale=1.0)   # scale set per image: 4 x its brain's p99
UNITS = 4.0


@dataclass(frozen=True)
class Perturbation:
    """The ranges of the random transform (defaults: issue 23's 'twice as far' set)."""

    rotation: float = 10.0    # degrees, each axis uniform in ±rotation
    scale: float = 0.10       # each axis uniform in 1 ± scale
    shift: float = 10.0       # mm, each axis uniform in ±shift
    warp: float = 5.0         # mm, the largest displacement of the smooth warp


def _rotation(angles: np.ndarray) -> np.ndarray:
    """R = Rz Ry Rx for angles (radians) about x, y, z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def box_centre(geometry: Geometry) -> np.ndarray:
    """Physical point (LPS mm) of the voxel-box centre."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    index = (np.asarray(geometry.shape, dtype=np.float64) - 1) / 2
    return direction @ (np.asarray(geometry.spacing) * index) + np.asarray(geometry.origin)


def random_transform(geometry: Geometry, perturbation: Perturbation, rng: np.random.Generator
                     ) -> tuple[sitk.Transform, dict[str, Any]]:
    """``S`` (module doc) as one ITK transform for images on ``geometry``, and the drawn parameters."""
    angles = rng.uniform(-perturbation.rotation, perturbation.rotation, 3)
    scales = rng.uniform(1 - perturbation.scale, 1 + perturbation.scale, 3)
    shift = rng.uniform(-perturbation.shift, perturbation.shift, 3)
    centre = box_centre(geometry)
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(c) for c in centre])
    affine.SetMatrix([float(a) for a in (_rotation(np.radians(angles)) @ np.diag(scales)).ravel()])
    affine.SetTranslation([float(t) for t in shift])
    extent = np.asarray(geometry.shape) * np.asarray(geometry.spacing)
    control = np.maximum(np.ceil(extent / WARP_CONTROL_MM).astype(int) + 1, 2)
    noise = rng.normal(0.0, 1.0, (*control, 3))
    smooth = np.stack([gaussian_filter(noise[..., a], 1.0, mode="nearest") for a in range(3)], axis=-1)
    smooth *= perturbation.warp / max(float(np.linalg.norm(smooth, axis=-1).max()), 1e-12)
    spacing = extent / (control - 1)
    first = box_centre(geometry) - np.asarray(geometry.direction).reshape(3, 3) @ (spacing * (control - 1) / 2)
    warp_geometry = Geometry(tuple(int(c) for c in control), tuple(float(s) for s in spacing),
                             tuple(float(o) for o in first), geometry.direction)
    field = sitk.GetImageFromArray(np.ascontiguousarray(smooth.transpose(2, 1, 0, 3)), isVector=True)
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    reference = to_sitk(np.zeros(control, dtype=np.float32), warp_geometry)
    field.CopyInformation(reference)
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])  # warp first, then A
    record = {"rotation_deg": angles.round(3).tolist(), "scale": scales.round(4).tolist(),
              "shift_mm": shift.round(3).tolist(), "warp_max_mm": perturbation.warp,
              "centre_mm": centre.round(3).tolist()}
    return composite, record


def resample(array: np.ndarray, geometry: Geometry, transform: sitk.Transform, labels: bool) -> np.ndarray:
    """``array(S(p))`` on its own grid: linear for images, nearest neighbour for label/landmark volumes (0 outside)."""
    image = to_sitk(array, geometry)
    out = sitk.Resample(image, image, transform, sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, 0.0)
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


def scanner_intensities(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` in another scanner's intensities (module doc): bias, gamma, noise, units ×4."""
    brain = image > 0
    top = float(np.percentile(image[brain], 99)) if brain.any() else 1.0
    acquisition = Acquisition(bias=SCANNER.bias, gamma=SCANNER.gamma, noise=SCANNER.noise, scale=UNITS * top)
    return apply_acquisition(image, acquisition, rng, brain)


@dataclass
class PerturbedMoving:
    """The moving side of one generated pair (arrays on the moving image's grid)."""

    image: np.ndarray
    labels: np.ndarray | None
    landmarks: np.ndarray | None
    scanner_image: np.ndarray
    record: dict[str, Any]


def perturb(image: np.ndarray, geometry: Geometry, labels: np.ndarray | None, landmarks: np.ndarray | None,
            perturbation: Perturbation, seed: int, index: int) -> PerturbedMoving:
    """Pair ``index`` of the set of ``seed`` (module doc); the inputs are not modified."""
    rng = np.random.default_rng([seed, index])
    transform, record = random_transform(geometry, perturbation, rng)
    moved = np.clip(resample(image.astype(np.float32), geometry, transform, labels=False), 0, None)
    moved_labels = None if labels is None else resample(labels, geometry, transform, labels=True)
    moved_landmarks = None if landmarks is None else resample(landmarks, geometry, transform, labels=True)
    record.update(perturbation=asdict(perturbation), seed=seed, index=index,
                  scanner={**asdict(SCANNER), "units": UNITS})
    return PerturbedMoving(moved.astype(np.float32), moved_labels, moved_landmarks,
                           scanner_intensities(moved, rng), record)


def max_rotation_degrees(record: dict[str, Any]) -> float:
    """Total rotation angle of a drawn transform (for the report)."""
    rotation = _rotation(np.radians(record["rotation_deg"]))
    return math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))


def rebuilt_transform(record: dict[str, Any], geometry: Geometry) -> sitk.Transform:
    """``S`` of a generated pair again, from its record (seed, index, ranges) and the moving image's grid: the same
    stream draws the same transform."""
    rng = np.random.default_rng([int(record["seed"]), int(record["index"])])
    return random_transform(geometry, Perturbation(**record["perturbation"]), rng)[0]


def through_perturbation(field: np.ndarray, geometry: Geometry, transform: sitk.Transform) -> np.ndarray:
    """A Learn2Reg field ``(H, W, D, 3)`` into the voxels of ``moving'`` (grid ``geometry``) as the field into the
    **original** moving image's voxels: ``u'(x) = u(x) + M^-1 (S(q) - q)`` with ``q`` the physical point of voxel
    ``x + u(x)`` and ``M`` the grid's direction times spacing. Scoring ``u'`` against the original labels and
    landmarks measures the registration without the generator's own loss (labels resampled by nearest neighbour
    through ``S``). ``S - id`` is sampled on the grid by ITK and interpolated trilinearly at ``x + u(x)`` (edge
    values outside): exact for the affine part, within the warp's linear pieces for the rest."""
    displacement = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, list(geometry.shape),
                                                     list(geometry.origin), list(geometry.spacing),
                                                     list(geometry.direction))
    s_minus_id = sitk.GetArrayFromImage(displacement).transpose(2, 1, 0, 3)          # (H, W, D, 3) mm
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in geometry.shape], indexing="ij"))
    index += np.moveaxis(np.asarray(field, dtype=np.float64), -1, 0)
    sampled = np.stack([map_coordinates(s_minus_id[..., c], index, order=1, mode="nearest") for c in range(3)], -1)
    to_voxels = np.linalg.inv(np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
                              * np.asarray(geometry.spacing)[None, :])
    return (np.asarray(field, dtype=np.float64) + sampled @ to_voxels.T).astype(np.float32)
