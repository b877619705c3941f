"""Apply a saved displacement field to other images and label maps (``nnreg_apply``).

Conventions: arrays in (i, j, k) order, geometry in ITK physical space (mm, LPS). Two field files are understood:

- the **challenge field** ``disp_<fix>_<mov>.nii.gz``: ``(H, W, D, 3)`` (or ``(3, H, W, D)``) voxel-unit pull field on
  the fixed grid, ``warped(x) = moving(x + u(x))``, read as the official evaluator reads it;
- nnreg's **ITK field** ``itk/disp_*.nii.gz`` (a ``(H, W, D, 1, 3)`` vector image): physical millimetres on the fixed
  grid, ``d = Direction @ diag(spacing) @ u`` (:mod:`nnreg.inference.export`), converted back to voxels here; an
  input on another grid is sampled once, in its own voxels, at ``phys_f(x) + d(x)`` (what ITK's ``Resample`` does).

A challenge field whose header records the shape of a moving image on another grid (``nnreg_register``'s
``field.nii.gz`` and ``nnreg_predict --affine``'s fields for such pairs,
:func:`nnreg.dataset.image_io.write_displacement`) points into that image's own voxels: each input must have that
shape and is sampled in its own voxels, as the registration's warped image was. Otherwise an input on another grid
than the fixed image is first brought onto the fixed grid in physical space (linear, or nearest for ``nearest``),
exactly as ``nnreg_predict`` (without ``--affine``) does with the moving image, then warped with the predictor's
own code: ``linear`` = :func:`nnreg.inference.export.warp_image` (trilinear, 0 outside), ``nearest`` =
:func:`nnreg.inference.export.warp_labels` (the official evaluator's nearest neighbour), so the results agree bit for
bit with ``--save-warped`` / ``--warp-labels``. ``bspline`` is cubic B-spline interpolation
(``scipy.ndimage.map_coordinates(order=3, mode="grid-constant")``, 0 outside). Integer-typed inputs (label maps)
default to ``nearest``, others to ``linear``. The output has the fixed image's geometry and the input's dtype
(interpolated values of an integer image are rounded and clipped to its range).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnreg.alignment.grids import physical_to_index, voxel_centres
from nnreg.dataset.image_io import (Geometry, displacement_points_into, image_shape, native_dtype, read_displacement,
                                   read_image)
from nnreg.evaluation.warp import sample_coordinates
from nnreg.inference.export import warp_image, warp_into, warp_labels, write_image_fast
from nnreg.inference.resample import align_moving, same_grid
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import check_output_targets

logger = logging.getLogger(__name__)

INTERPOLATIONS = ("linear", "bspline", "nearest")


@dataclass(frozen=True)
class LoadedField:
    """A field in voxel units on the fixed grid, and what kind of file it came from."""

    field: np.ndarray   # float32 (H, W, D, 3)
    kind: str           # "challenge" or "itk"
    points_into: tuple[int, int, int] | None = None   # x + u(x) in the voxels of a moving image of this shape
    physical: np.ndarray | None = None                 # an ITK field's own mm displacements (float64, (H, W, D, 3))


def _is_itk_vector_field(path: Path) -> bool:
    """nnreg's ITK export is a 5D ``(H, W, D, 1, 3)`` NIfTI vector image; the challenge field is 4D."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return False
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for corrupt files
        raise NnregError(f"cannot read displacement field ({str(exc).strip().splitlines()[0]})", path) from None
    return len(shape) == 5 and shape[3] == 1 and shape[4] == 3


def _read_itk_field(path: Path, fixed_geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Read nnreg's mm field: (its voxel-unit field on the fixed grid, its mm displacements); its grid must be the
    fixed image's."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise NnregError(f"cannot read ITK displacement field ({str(exc).strip().splitlines()[-1]})", path) from None
    geometry = Geometry(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                        tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))
    if not same_grid(geometry, fixed_geometry):
        raise NnregError(f"the ITK field's grid {list(geometry.shape)} @ {[round(s, 4) for s in geometry.spacing]} mm "
                         f"(origin {[round(o, 2) for o in geometry.origin]}) is not the fixed image's "
                         f"{list(fixed_geometry.shape)} @ {[round(s, 4) for s in fixed_geometry.spacing]} mm "
                         f"(origin {[round(o, 2) for o in fixed_geometry.origin]})", path)
    physical = sitk.GetArrayFromImage(image).astype(np.float64).transpose(2, 1, 0, 3)   # (i, j, k, 3), mm
    matrix = np.asarray(fixed_geometry.direction, dtype=np.float64).reshape(3, 3) * \
        np.asarray(fixed_geometry.spacing)[None, :]
    voxels = np.einsum("...r,cr->...c", physical, np.linalg.inv(matrix), optimize=True).astype(np.float32)
    return voxels, physical


def itk_field_into(physical: np.ndarray, fixed_geometry: Geometry, geometry: Geometry) -> np.ndarray:
    """An ITK field's transform as a voxel field on the fixed grid pointing into the voxels of an image on
    ``geometry``: ``idx(phys_f(x) + d(x)) - x`` (float64 inside), so the image is sampled once, where ITK samples
    it, whatever its grid (ITK's ``Resample`` with a ``DisplacementFieldTransform``)."""
    to_index = physical_to_index(geometry)
    moved = (voxel_centres(fixed_geometry) + physical) @ to_index[:3, :3].T + to_index[:3, 3]
    for axis, n in enumerate(fixed_geometry.shape):        # minus the fixed voxel index, axis by axis, in place
        shape = [1, 1, 1]
        shape[axis] = n
        moved[..., axis] -= np.arange(n, dtype=np.float64).reshape(shape)
    return moved.astype(np.float32)


def load_field(path: str | Path, fixed_geometry: Geometry) -> LoadedField:
    """Read a challenge or ITK field as a float32 voxel-unit field on the fixed grid; one-line error on mismatch."""
    path = Path(path)
    if not path.is_file():
        raise NnregError("displacement file not found", path)
    if _is_itk_vector_field(path):
        _refuse_partial_transform(path)
        voxels, physical = _read_itk_field(path, fixed_geometry)
        return LoadedField(voxels, "itk", physical=physical)
    field = read_displacement(path).astype(np.float32)
    if tuple(field.shape[:3]) != tuple(fixed_geometry.shape):
        raise NnregError(f"field grid {list(field.shape[:3])} does not match the fixed image's grid "
                         f"{list(fixed_geometry.shape)} (a disp_<fix>_<mov> field lives on its fixed image's grid)",
                         path)
    into = displacement_points_into(path) if path.name.endswith((".nii", ".nii.gz")) else None
    return LoadedField(field, "challenge", into)


def _refuse_partial_transform(path: Path) -> None:
    """``PREFIX1Warp.nii.gz`` beside ``PREFIX0GenericAffine.mat`` (``nnreg_register --transform``, ANTs) is the
    deformable part only: applied alone it would drop the affine, so it is refused with what to use instead."""
    for suffix in ("1Warp.nii.gz", "1InverseWarp.nii.gz"):
        if path.name.endswith(suffix):
            affine = path.with_name(path.name[: -len(suffix)] + "0GenericAffine.mat")
            if affine.is_file():
                raise NnregError(f"this is only the deformable part of a transform whose affine is {affine.name}; "
                                 f"give nnreg_register's field.nii.gz instead, or apply both with antsApplyTransforms "
                                 f"-t {path.name} -t {affine.name}", path)


def default_interpolation(dtype: np.dtype) -> str:
    """``nearest`` for integer-typed images (label maps), ``linear`` otherwise."""
    return "nearest" if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_) else "linear"


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) and np.issubdtype(values.dtype, np.floating):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


def warp_array(array: np.ndarray, field: np.ndarray, interpolation: str) -> np.ndarray:
    """``array(x + u(x))`` on the field's grid, ``x + u(x)`` in the array's own voxels (the array on the field's
    grid, or on the moving grid a marked field points into), in the array's dtype."""
    if interpolation not in INTERPOLATIONS:
        raise NnregError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if interpolation == "nearest":
        return warp_labels(array, field)
    if interpolation == "linear":
        same_shape = tuple(array.shape) == tuple(field.shape[:3])   # nnreg_predict's own warp, bit for bit
        return _cast(warp_image(array, field) if same_shape else warp_into(array, field), array.dtype)
    warped = ndimage.map_coordinates(np.asarray(array, dtype=np.float64), sample_coordinates(field), order=3,
                                     mode="grid-constant", cval=0.0)
    return _cast(warped, array.dtype)


def apply_to_image(field: np.ndarray, fixed_geometry: Geometry, image_path: str | Path,
                   interpolation: str | None = None, points_into: tuple[int, int, int] | None = None,
                   physical: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Warp one image file by a voxel-unit field on the fixed grid; returns the warped array and the interpolation.
    ``points_into``: the field's ``x + u(x)`` are voxels of a moving image of that shape on its own grid
    (:class:`LoadedField`), so the input is sampled in its own voxels and must have that shape. ``physical``: an
    ITK field's mm displacements; an input on another grid is then sampled in its own voxels where the physical
    transform puts each fixed voxel (one interpolation, as ITK), not resampled onto the fixed grid first."""
    image_path = Path(image_path)
    dtype = native_dtype(image_path)
    mode = interpolation or default_interpolation(dtype)
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)      # image writers have no boolean voxel type
    if mode == "nearest":
        array, geometry = read_image(image_path, dtype=np.int32 if np.issubdtype(dtype, np.integer) else np.float32)
    else:
        array, geometry = read_image(image_path, dtype=np.float32)
    if physical is not None and not same_grid(geometry, fixed_geometry):
        field = itk_field_into(physical, fixed_geometry, geometry)
    elif points_into is None:
        array = align_moving(array, geometry, fixed_geometry, str(image_path), labels=mode == "nearest")
    else:
        check_input_shape(array.shape, points_into, image_path)
    return _cast(warp_array(array, field, mode), dtype), mode


def check_input_shape(shape: Sequence[int], points_into: tuple[int, int, int], path: str | Path) -> None:
    """An input of a field that points into a moving image on another grid must lie on that image's grid."""
    if tuple(shape) != tuple(points_into):
        raise NnregError(f"the field points into the voxels of a {'x'.join(map(str, points_into))} moving image "
                         f"(its grid differs from the fixed image's); this input is {'x'.join(map(str, shape))}: "
                         f"give images on the moving image's grid", path)


def output_paths(inputs: Sequence[Path], output: Path) -> list[Path]:
    """``-o`` is the file for a single input (or a folder to write it into), a folder for several inputs."""
    if len(inputs) == 1 and not output.is_dir() and output.name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        return [output]
    if output.exists() and not output.is_dir():
        raise NnregError(f"{len(inputs)} inputs need a folder for -o, but this is a file", output)
    names = [p.name for p in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise NnregError(f"two inputs are named {duplicates[0]}; their outputs would collide in the -o folder", output)
    return [output / name for name in names]


def apply_field(field_path: str | Path, inputs: Sequence[str | Path], fixed_path: str | Path, output: str | Path,
                interpolation: str | None = None) -> list[Path]:
    """Warp every input by the field onto the fixed image's grid and write it under ``output``; returns the files."""
    inputs = [Path(p).expanduser() for p in inputs]
    if not inputs:
        raise NnregError("no input images given (-i)")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise NnregError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    for path in inputs:
        if not path.is_file():
            raise NnregError("input image not found", path)
    targets = output_paths(inputs, Path(output).expanduser())
    protected = {Path(p).expanduser().resolve() for p in (*inputs, fixed_path, field_path)}
    for target in targets:
        if target.resolve() in protected:
            raise NnregError("refusing to overwrite an input file (an image, the reference or the field); choose "
                             "another -o", target)
    _, fixed_geometry = read_image(fixed_path)
    loaded = load_field(field_path, fixed_geometry)
    for source in inputs:                 # every input checked before the first output is written
        shape = image_shape(source)
        if loaded.points_into is not None:
            check_input_shape(shape, loaded.points_into, source)
    check_output_targets((f"the output of {source.name}", target) for source, target in zip(inputs, targets))
    logger.info("%s: %s field on the fixed grid %s", field_path, loaded.kind, list(fixed_geometry.shape))
    written = []
    for source, target in zip(inputs, targets):
        warped, mode = apply_to_image(loaded.field, fixed_geometry, source, interpolation, loaded.points_into,
                                      loaded.physical)
        write_image_fast(warped, fixed_geometry, target)
        logger.info("%s -> %s (%s, %s)", source, target, mode, warped.dtype)
        written.append(target)
    return written
