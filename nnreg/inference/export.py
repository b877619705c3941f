"""Writing a pair's results: the challenge field, the ITK field, the warped image and warped labels.

Conventions:
- Challenge field ``disp_<fix>_<mov>.nii.gz`` (long form when modalities differ): float32 ``(H, W, D, 3)`` on
  the original fixed grid, voxel units along the array axes as nibabel loads them, pull
  (``warped(x) = moving(x + u(x))``), written by :func:`nnreg.dataset.image_io.write_displacement` (gzip level 1).
- ITK field ``itk/<same name>``: the same transform as a displacement in **physical millimetres** (ITK's LPS
  space) on the fixed grid: ``d(p) = Direction @ diag(spacing) @ u``. SimpleITK's ``DisplacementFieldTransform``
  maps each output point ``p`` to ``p + d(p)`` in the moving image, so ``sitk.Resample(moving, fixed, T)`` gives
  the warped moving image, also when the moving image lies on another grid. Stored as float32 vectors; cast to
  ``sitkVectorFloat64`` before building the transform.
- Warped image ``warped/warped_<...>.nii.gz``: trilinear, 0 outside, fixed image's header.
- Warped labels ``warped_labels/warped_<...>.nii.gz``: nearest neighbour exactly as the official evaluator warps.
- Inverse field ``inverse/disp_<mov>_<fix>.nii.gz`` (``--inverse``): the moving <- fixed pull field in the challenge
  layout on the moving grid (= the fixed grid), moving image's header; see :mod:`nnreg.inference.inverse`.
- With ``--affine`` (:mod:`nnreg.inference.affine_stage`) the field points into the **moving image's own voxels**
  (``ExportJob.moving_grid``): the ITK field is then ``phys_m(x + u) - phys_f(x)``, the warped image samples the
  original moving image and label maps are brought onto the moving grid; ``affine/<name>.json`` records the affine.
Every file is written atomically (temporary name, then rename).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnreg.alignment.grids import index_to_physical
from nnreg.alignment.sampling import sample_at_indices
from nnreg.dataset.image_io import (Geometry, label_storage_dtype, read_label_map, write_displacement,
                                   write_nii_gz)
from nnreg.dataset.naming import displacement_filename
from nnreg.evaluation.warp import sample_coordinates, warp_nearest
from nnreg.inference.resample import align_moving, other_grid_shape, to_sitk
from nnreg.spatial import warp
from nnreg.utilities.files import atomic_path, write_json

logger = logging.getLogger(__name__)

IMAGE_COMPRESSION_LEVEL = 1  # ITK's gzip level for formats other than .nii.gz (those: nnreg.utilities.compression)


@dataclass(frozen=True)
class ExportOptions:
    """Which files to write for each pair besides the challenge displacement field."""

    save_warped: bool = False
    labels_folder: Path | None = None
    itk: bool = False
    qc: bool = False
    inverse: bool = False
    affine: bool = False     # affine pre-alignment before the network (--affine): affine/<name>.json per pair


@dataclass(frozen=True)
class PairOutputs:
    """Output paths of one pair (only those the options ask for are written)."""

    displacement: Path
    itk: Path
    warped: Path
    warped_labels: Path
    qc: Path
    inverse: Path | None = None
    affine: Path | None = None

    def required(self, options: ExportOptions) -> list[Path]:
        paths = [self.displacement]
        if options.itk:
            paths.append(self.itk)
        if options.save_warped:
            paths.append(self.warped)
        if options.labels_folder is not None:
            paths.append(self.warped_labels)
        if options.qc:
            paths.append(self.qc)
        if options.inverse and self.inverse is not None:
            paths.append(self.inverse)
        if options.affine and self.affine is not None:
            paths.append(self.affine)
        return paths

    def finished(self, options: ExportOptions) -> bool:
        return all(p.is_file() for p in self.required(options))


def pair_outputs(out: Path, fixed: str | Path, moving: str | Path) -> PairOutputs:
    """Output paths for a pair, named by the official rule (``disp_<fix>_<mov>.nii.gz``)."""
    name = displacement_filename(fixed, moving)
    warped_name = "warped_" + name[len("disp_"):]
    return PairOutputs(displacement=out / name, itk=out / "itk" / name, warped=out / "warped" / warped_name,
                       warped_labels=out / "warped_labels" / warped_name,
                       qc=out / "qc" / name.replace(".nii.gz", ".png"),
                       inverse=out / "inverse" / displacement_filename(moving, fixed),
                       affine=out / "affine" / name.replace(".nii.gz", ".json"))


def write_image_fast(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a 3D (i, j, k) array with ``geometry`` atomically, compressed (:func:`write_itk_image`)."""
    write_itk_image(to_sitk(array, geometry), path)


def _direction_spacing(geometry: Geometry) -> np.ndarray:
    """``Direction @ diag(spacing)`` (3x3, float64): a voxel-unit vector to LPS millimetres."""
    return np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3) * np.asarray(geometry.spacing)[None, :]


def _vectors_times(field: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``matrix @ v`` for every vector of a ``(..., 3)`` field, float32, as one ``(N, 3) x (3, 3)`` product (numpy's
    einsum took ~4x as long; 1 s for a 1 mm field without its ``optimize``)."""
    flat = np.asarray(field, np.float32).reshape(-1, 3)
    return (flat @ matrix.T.astype(np.float32)).reshape(np.shape(field))


def physical_displacement(field: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Voxel-unit ``(H, W, D, 3)`` field -> millimetres in ITK physical space: ``Direction @ diag(spacing) @ u``."""
    return _vectors_times(field, _direction_spacing(geometry))


def voxel_displacement(field: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The inverse of :func:`physical_displacement`: a millimetre ``(H, W, D, 3)`` field -> voxel units of
    ``geometry``."""
    return _vectors_times(field, np.linalg.inv(_direction_spacing(geometry)))


def physical_displacement_into(field: np.ndarray, fixed: Geometry, moving: Geometry) -> np.ndarray:
    """A field pointing into the ``moving`` grid's voxels -> millimetres on the fixed grid: ``phys_m(x + u(x)) -
    phys_f(x)`` (float64 sums, float32 out); equals :func:`physical_displacement` when the grids are one."""
    coords = sample_coordinates(field)                      # x + u(x), float64 (3, H, W, D)
    to_moving, to_fixed = index_to_physical(moving), index_to_physical(fixed)
    out = np.empty(field.shape, dtype=np.float32)
    ramps = [np.arange(n, dtype=np.float64).reshape([-1 if a == c else 1 for a in range(3)])
             for c, n in enumerate(field.shape[:3])]
    for r in range(3):
        value = np.full(field.shape[:3], to_moving[r, 3] - to_fixed[r, 3])
        for c in range(3):
            value += to_moving[r, c] * coords[c]
            value -= to_fixed[r, c] * ramps[c]
        out[..., r] = value
    return out


def itk_vector_image(displacement_mm: np.ndarray, geometry: Geometry) -> sitk.Image:
    """An ``(H, W, D, 3)`` displacement in mm on ``geometry`` as an ITK vector image (its dtype kept), ready for
    ``DisplacementFieldTransform``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(displacement_mm.transpose(2, 1, 0, 3)), isVector=True)
    image.SetSpacing(tuple(float(s) for s in geometry.spacing))
    image.SetOrigin(tuple(float(o) for o in geometry.origin))
    image.SetDirection(tuple(float(d) for d in geometry.direction))
    return image


def itk_displacement_image(field: np.ndarray, geometry: Geometry) -> sitk.Image:
    """The voxel-unit field as an ITK vector image on the fixed grid (mm)."""
    return itk_vector_image(physical_displacement(field, geometry), geometry)


def write_itk_image(image: sitk.Image, path: Path) -> None:
    """Write an ITK image atomically, compressed: a ``.nii.gz`` gzipped by nnreg
    (:func:`nnreg.dataset.image_io.write_nii_gz`), other formats with ITK's compression."""
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        write_nii_gz(image, path)
        return
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True, IMAGE_COMPRESSION_LEVEL)


def write_itk_displacement(field: np.ndarray, geometry: Geometry, path: Path,
                           moving_grid: Geometry | None = None) -> None:
    """Write the physical-mm ITK displacement field atomically (``moving_grid``: the field points into that grid's
    voxels, :func:`physical_displacement_into`)."""
    if moving_grid is None:
        write_itk_image(itk_displacement_image(field, geometry), path)
    else:
        write_itk_image(itk_vector_image(physical_displacement_into(field, geometry, moving_grid), geometry), path)


def warp_image(moving_on_fixed: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``moving(x + u(x))`` with trilinear interpolation (0 outside) on the fixed grid."""
    image = torch.from_numpy(np.ascontiguousarray(moving_on_fixed, dtype=np.float32))[None, None]
    disp = torch.from_numpy(np.ascontiguousarray(field)).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        return warp(image, disp, mode="bilinear", padding="zeros")[0, 0].numpy()


def warp_into(moving: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``moving(x + u(x))`` for a field that points into ``moving``'s own voxels (any grid; trilinear, 0 outside),
    at the float64 coordinates the official evaluator samples."""
    image = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    index = torch.from_numpy(sample_coordinates(field)).permute(1, 2, 3, 0)
    with torch.inference_mode():
        return sample_at_indices(image, index).numpy()


def warp_labels(labels: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Nearest-neighbour warp of a label map on the fixed grid, bit-identical to the official evaluator's."""
    return warp_nearest(labels, field).astype(labels.dtype)


@dataclass
class ExportJob:
    """Everything a writer worker needs for one pair (picklable)."""

    outputs: PairOutputs
    options: ExportOptions
    field: np.ndarray
    fixed_geometry: Geometry
    moving_on_fixed: np.ndarray | None = None
    fixed: np.ndarray | None = None
    moving_labels: Path | None = None
    moving_geometry: Geometry | None = None
    inverse: np.ndarray | None = None
    # --affine: the field points into the voxels of ``moving_grid`` (the moving image's own grid), ``moving`` is the
    # moving image on it (for the warped image), ``affine_record`` goes to outputs.affine (JSON)
    moving_grid: Geometry | None = None
    moving: np.ndarray | None = None
    affine_record: dict | None = None


def export_pair(job: ExportJob) -> str:
    """Write every requested file of one pair; returns the displacement file name."""
    options, outputs, field = job.options, job.outputs, job.field
    write_displacement(field, outputs.displacement, job.fixed_geometry,
                       points_into=other_grid_shape(job.moving_grid, job.fixed_geometry))
    if job.affine_record is not None and outputs.affine is not None:
        write_json(job.affine_record, outputs.affine)
    if options.itk:
        write_itk_displacement(field, job.fixed_geometry, outputs.itk, job.moving_grid)
    if options.inverse and job.inverse is not None and outputs.inverse is not None:
        write_displacement(job.inverse, outputs.inverse, job.moving_geometry or job.fixed_geometry)
    warped = None
    if options.save_warped or options.qc:
        if job.moving_grid is not None and job.moving is not None:
            warped = warp_into(job.moving, field)
        elif job.moving_grid is None and job.moving_on_fixed is not None:
            warped = warp_image(job.moving_on_fixed, field)
        if options.save_warped and warped is not None:
            write_image_fast(warped, job.fixed_geometry, outputs.warped)
    if options.labels_folder is not None and job.moving_labels is not None:
        labels, label_geometry = read_label_map(job.moving_labels)
        labels = align_moving(labels, label_geometry, job.moving_grid or job.fixed_geometry, str(job.moving_labels),
                              labels=True)
        write_image_fast(warp_labels(labels, field).astype(label_storage_dtype(job.moving_labels, labels)),
                         job.fixed_geometry, outputs.warped_labels)
    if options.qc and job.fixed is not None and job.moving_on_fixed is not None and warped is not None:
        from nnreg.inference.qc import write_qc_figure

        write_qc_figure(job.fixed, job.moving_on_fixed, warped, field, outputs.qc,
                        title=outputs.displacement.name)
    return outputs.displacement.name
