"""Writing ``nnreg_register``'s files: warped image, Learn2Reg field, ITK transforms, inverse, labels, QC, log.

Conventions: see :mod:`nnreg.registration.transforms`. Every file is written atomically
(:func:`nnreg.utilities.files.atomic_path`); images as gzip level 1 NIfTI (:mod:`nnreg.utilities.compression`) with
the fixed (or, for the inverse, the moving) image's geometry. The warped image is trilinear (0 outside the moving
image), label maps nearest neighbour exactly as the Learn2Reg evaluator warps them.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from nnreg.alignment.grids import index_to_physical, physical_to_index, voxel_centres
from nnreg.alignment.sampling import sample_at_indices
from nnreg.dataset.image_io import Geometry, write_displacement
from nnreg.evaluation.warp import nearest_indices, sample_coordinates, warp_with_indices
from nnreg.inference.export import itk_vector_image, voxel_displacement, write_image_fast, write_itk_image
from nnreg.inference.resample import other_grid_shape
from nnreg.registration.normalization import normalise
from nnreg.registration.pipeline import Registration
from nnreg.registration.transforms import (affine_transform, apply_matrix, forward_on_fixed_grid,
                                           inverse_on_moving_grid)
from nnreg.utilities.files import atomic_path
from nnreg.utilities.slabs import row_slabs, slab_rows

logger = logging.getLogger(__name__)

OUTPUT_THREADS = 2   # files written at once (write_outputs)


@dataclass(frozen=True)
class OutputPaths:
    """Which files to write (None = not requested)."""

    warped: Path | None = None
    field: Path | None = None
    transform: str | None = None           # prefix: <prefix>0GenericAffine.mat, <prefix>1Warp.nii.gz
    warped_labels: Path | None = None
    qc: Path | None = None
    log: Path | None = None
    inverse_field: Path | None = None      # Learn2Reg inverse on the moving grid (with --inverse)
    inverse_warped: Path | None = None     # the fixed image warped onto the moving grid (with --inverse)

    @classmethod
    def in_folder(cls, folder: Path, labels: bool, inverse: bool) -> "OutputPaths":
        return cls(folder / "warped.nii.gz", folder / "field.nii.gz", str(folder / "transform"),
                   folder / "warped_labels.nii.gz" if labels else None, folder / "qc.png", folder / "register.log",
                   folder / "inverse_field.nii.gz" if inverse else None,
                   folder / "inverse_warped.nii.gz" if inverse else None)


def transform_files(prefix: str) -> tuple[Path, Path, Path]:
    """(affine .mat, displacement field, inverse displacement field) of a ``--transform`` prefix (ANTs names)."""
    return Path(f"{prefix}0GenericAffine.mat"), Path(f"{prefix}1Warp.nii.gz"), Path(f"{prefix}1InverseWarp.nii.gz")


def _sample(array: np.ndarray, field: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``array(x + u(x))`` with the field's coordinates computed in float64 (0 outside), slab by slab along the first
    axis (:mod:`nnreg.utilities.slabs`: the float64 coordinates of a 0.7 mm scan's whole grid were 1.3 GB more at
    once)."""
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = np.empty(field.shape[:3], np.float32)
    with torch.no_grad():
        for slab in row_slabs(field.shape[0], slab_rows(field.shape[1] * field.shape[2])):
            index = torch.from_numpy(sample_coordinates(field[slab], first_row=slab.start)).permute(1, 2, 3, 0)
            out[slab] = sample_at_indices(image, index, mode).numpy()
    return out


def write_outputs(registration: Registration, fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
                  moving_geometry: Geometry, paths: OutputPaths, moving_labels: np.ndarray | None = None) -> list[str]:
    """Write every requested file; returns log lines (what was written, how long it took).

    The files are independent once the fields are computed, so they are written by :data:`OUTPUT_THREADS` threads
    at once: the gzip of a 1 mm field (0.2-0.6 s with ISA-L, 2-4 s with zlib; both release the GIL) and the QC
    figure's matplotlib work (~2 s) run side by side (a 1 mm pair, 2 cores: 10.1 s one after another, 5.5 s so
    with zlib; 3.9 s with ISA-L). No more threads than torch
    may use (``--threads 1``: one). Each file is still written atomically; once every writer has finished, the first
    error is raised and the others are logged."""
    began = time.perf_counter()
    field, displacement = forward_on_fixed_grid(registration, fixed_geometry, moving_geometry)
    warped = _sample(moving, field) if paths.warped is not None or paths.qc is not None else None
    jobs: list[tuple[list[Path], Callable[[], None]]] = []
    if paths.field is not None:
        jobs.append(([paths.field], partial(write_displacement, field, paths.field, fixed_geometry,
                                            other_grid_shape(moving_geometry, fixed_geometry))))
    if paths.warped is not None and warped is not None:
        jobs.append(([paths.warped], partial(write_image_fast, warped, fixed_geometry, paths.warped)))
    if paths.transform is not None:
        affine_path, warp_path, _ = transform_files(paths.transform)
        jobs.append(([affine_path, warp_path], partial(_write_transform, registration, displacement, fixed_geometry,
                                                       affine_path, warp_path)))
    if paths.warped_labels is not None and moving_labels is not None:
        jobs.append(([paths.warped_labels], partial(_write_labels, moving_labels, field, fixed_geometry,
                                                    paths.warped_labels)))
    if paths.inverse_field is not None or paths.inverse_warped is not None:
        inverse_files = [p for p in (paths.inverse_field, paths.inverse_warped) if p is not None]
        if paths.transform is not None:
            inverse_files.append(transform_files(paths.transform)[2])
        jobs.append((inverse_files, partial(_write_inverse, registration, fixed, fixed_geometry, moving_geometry,
                                            paths)))
    if paths.qc is not None and warped is not None:      # the longest job first: the others share the other writer
        jobs.insert(0, ([paths.qc], partial(_write_qc, registration, fixed, fixed_geometry, moving, moving_geometry,
                                            warped, displacement, paths.qc)))
    with ThreadPoolExecutor(max_workers=max(1, min(OUTPUT_THREADS, torch.get_num_threads()))) as pool:
        futures = [pool.submit(job) for _, job in jobs]
        wait(futures)
    errors = [(files, error) for (files, _), future in zip(jobs, futures) if (error := future.exception())]
    for files, error in errors[1:]:
        logger.error("writing %s failed: %s", ", ".join(map(str, files)), error)
    if errors:
        raise errors[0][1]                    # the first writer's error, after all of them have stopped
    written = [p for files, _ in jobs for p in files]
    return [f"wrote {p}" for p in written] + [f"outputs: {time.perf_counter() - began:.1f} s"]


def _write_transform(registration: Registration, displacement: np.ndarray, fixed_geometry: Geometry,
                     affine_path: Path, warp_path: Path) -> None:
    """The ANTs-style pair: the affine ``.mat`` and the deformable part as a float32 ITK displacement field (mm)."""
    with atomic_path(affine_path) as tmp:
        sitk.WriteTransform(affine_transform(registration), str(tmp))
    write_itk_image(itk_vector_image(np.asarray(displacement, dtype=np.float32), fixed_geometry), warp_path)


def _write_labels(labels: np.ndarray, field: np.ndarray, fixed_geometry: Geometry, path: Path) -> None:
    """The moving label map (on the moving grid, in the type it is written in) warped by nearest neighbour, as the
    Learn2Reg evaluator warps it."""
    out = warp_with_indices(labels, nearest_indices(field, labels.shape))
    write_image_fast(out.astype(labels.dtype, copy=False), fixed_geometry, path)


def _write_inverse(registration: Registration, fixed: np.ndarray, fixed_geometry: Geometry,
                   moving_geometry: Geometry, paths: OutputPaths) -> None:
    """The inverse field on the moving grid, the fixed image warped onto it and the ITK inverse warp."""
    inverse, inverse_displacement = inverse_on_moving_grid(registration, fixed_geometry, moving_geometry)
    if paths.inverse_field is not None:
        write_displacement(inverse, paths.inverse_field, moving_geometry,
                           other_grid_shape(fixed_geometry, moving_geometry))
    if paths.inverse_warped is not None:
        write_image_fast(_sample(fixed, inverse), moving_geometry, paths.inverse_warped)
    if paths.transform is not None:
        write_itk_image(itk_vector_image(np.asarray(inverse_displacement, dtype=np.float32), fixed_geometry),
                        transform_files(paths.transform)[2])


def _write_qc(registration: Registration, fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
              moving_geometry: Geometry, warped: np.ndarray, displacement: np.ndarray, path: Path) -> None:
    """QC figure: moving after the affine stage, fixed, warped, and the deformable part's grid and Jacobian. The
    figure draws the three mid-slices only, so the affine-only image is resampled on those planes alone."""
    from nnreg.inference.qc import write_qc_figure

    moving_n = torch.from_numpy(normalise(moving, "moving"))[None, None]
    to_moving = physical_to_index(moving_geometry) @ registration.affine.homogeneous
    affine_only = np.zeros(fixed_geometry.shape, np.float32)
    with torch.no_grad():
        for axis in range(3):
            plane, middle = _mid_plane(fixed_geometry, axis)
            index = apply_matrix(to_moving, torch.from_numpy(voxel_centres(plane)))
            where = [slice(None)] * 3
            where[axis] = slice(middle, middle + 1)
            affine_only[tuple(where)] = sample_at_indices(moving_n, index).numpy()
    deformable = voxel_displacement(displacement, fixed_geometry)
    write_qc_figure(normalise(fixed, "fixed"), affine_only, normalise(warped, "warped"),
                    deformable, path, title="nnreg_register (moving after the affine stage; deformable part)")


def _mid_plane(geometry: Geometry, axis: int) -> tuple[Geometry, int]:
    """The one-voxel-thick grid of ``geometry``'s mid-slice across ``axis`` (the slice the QC figure draws), and its
    index along ``axis``."""
    middle = geometry.shape[axis] // 2
    shape = list(geometry.shape)
    shape[axis] = 1
    offset = np.zeros(3)
    offset[axis] = middle
    origin = index_to_physical(geometry) @ np.append(offset, 1.0)
    return Geometry(tuple(shape), geometry.spacing, tuple(float(o) for o in origin[:3]),  # type: ignore[arg-type]
                    geometry.direction), middle
