"""One ``nnreg_register`` run: read the files, register, write the outputs and the log (the CLI is a thin shell)."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnreg.alignment.affine import AffineSettings
from nnreg.dataset.image_io import Geometry, label_storage_dtype, read_image, read_label_map
from nnreg.dataset.naming import challenge_id_and_modality
from nnreg.inference.refinement_settings import MULTIMODAL_REFINEMENT
from nnreg.inference.resample import align_moving, resample_onto, same_grid
from nnreg.registration.outputs import OutputPaths, transform_files, write_outputs
from nnreg.registration.pipeline import FINER_CORRECTION, FINER_GRID, RegistrationSettings, register_images
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import atomic_path, check_output_targets, remove_stale_temporaries, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """The command line of ``nnreg_register``."""

    fixed: str
    moving: str
    output: str | None = None
    warped: str | None = None
    field: str | None = None
    transform: str | None = None
    moving_labels: str | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None
    inverse: bool = False
    similarity: str | None = None            # "lncc" / "mind"; None: by the images' modality suffixes
    working_spacing: float = 2.0
    final_spacing: float | None = None       # the finer grid's spacing (None: the fixed image's finest)
    finer_steps: int = FINER_GRID.steps
    correction_steps: int = FINER_CORRECTION.steps
    affine_only: bool = False
    threads: int | None = None
    model: str | None = None                 # a trained model folder: its network starts the deformable stage
    folds: list[str] | None = None           # None = every fold present
    checkpoint: str = "checkpoint_final.pth"
    configuration: str | None = None
    device: str = "cpu"


def output_paths(request: RunRequest) -> OutputPaths:
    """The files to write: everything in ``--output``, single files from ``--warped/--field/--transform``."""
    if request.output is None and not (request.warped or request.field or request.transform):
        raise NnregError("nothing to write: give -o OUTDIR and/or --warped FILE, --field FILE, --transform PREFIX")
    paths = OutputPaths()
    if request.output is not None:
        paths = OutputPaths.in_folder(Path(request.output), request.moving_labels is not None, request.inverse)
    elif request.moving_labels is not None or request.inverse:
        raise NnregError("--moving-labels and --inverse write into the -o folder: give -o OUTDIR")
    overrides = {"warped": Path(request.warped) if request.warped else None,
                 "field": Path(request.field) if request.field else None, "transform": request.transform}
    paths = dataclasses.replace(paths, **{k: v for k, v in overrides.items() if v is not None})
    inputs = {Path(p).resolve() for p in (request.fixed, request.moving, request.moving_labels, request.fixed_mask,
                                          request.moving_mask) if p}
    targets = [p for p in (paths.warped, paths.field, paths.warped_labels, paths.inverse_field, paths.inverse_warped)
               if p is not None]
    if paths.transform is not None:
        targets += list(transform_files(paths.transform))
    for target in targets:
        if target.resolve() in inputs:
            raise NnregError("refusing to overwrite an input file; choose another output", target)
    return paths


def output_targets(paths: OutputPaths) -> list[tuple[str, Path]]:
    """Every file a run writes, with the option (or folder file name) that asked for it."""
    named = [("the warped image", paths.warped), ("the field", paths.field),
             ("the warped labels", paths.warped_labels), ("the QC figure", paths.qc), ("the log", paths.log),
             ("register.json", paths.log.with_suffix(".json") if paths.log is not None else None),
             ("the inverse field", paths.inverse_field), ("the inverse-warped image", paths.inverse_warped)]
    if paths.transform is not None:
        affine, warp, inverse_warp = transform_files(paths.transform)
        named += [("the transform's affine", affine), ("the transform's warp", warp)]
        if paths.inverse_field is not None or paths.inverse_warped is not None:
            named.append(("the transform's inverse warp", inverse_warp))
    return [(option, path) for option, path in named if path is not None]


def read_labels(path: str, moving_geometry: Geometry) -> np.ndarray:
    """``--moving-labels`` on the moving image's grid (nearest neighbour in physical space when its own grid differs),
    in the type its warped copy is written in (:func:`label_storage_dtype`: a uint8 map stays uint8), read before the
    registration so that a bad file stops the run before any work."""
    labels, geometry = read_label_map(path)
    aligned = align_moving(labels, geometry, moving_geometry, path, labels=True, grid="moving")
    return aligned.astype(label_storage_dtype(path, labels), copy=False)


# the affine stage's similarity for each deformable one (nnreg.alignment.similarity names)
AFFINE_SIMILARITY = {"lncc": "ncc", "mind": "mi"}


def choose_similarity(request: RunRequest) -> str:
    """The request's similarity, or (none given) ``mind`` when the two file names carry different LUMIR modality
    suffixes (``_0000`` / ``_0001``), else ``lncc``."""
    if request.similarity is not None:
        if request.similarity not in AFFINE_SIMILARITY:
            raise NnregError(f"unknown similarity {request.similarity!r} (choose one of "
                             f"{', '.join(AFFINE_SIMILARITY)})")
        return request.similarity
    different = challenge_id_and_modality(request.fixed)[1] != challenge_id_and_modality(request.moving)[1]
    if different:
        logger.info("the images' modality suffixes differ: MIND-SSC (and mutual information for the affine stage)")
    return "mind" if different else "lncc"


def read_mask(path: str, image_geometry: Geometry) -> np.ndarray:
    """A mask (non-zero = counted) on its image's grid: as it is when it shares that grid, else resampled onto it
    in physical space by nearest neighbour (as ANTs evaluates a mask at physical points); one line naming the file
    when it covers none of the image (unreadable and non-3D files: :func:`read_image`'s line)."""
    mask, geometry = read_image(path)
    binary = (mask != 0).astype(np.uint8)
    if not same_grid(geometry, image_geometry):
        binary = resample_onto(binary, geometry, image_geometry, labels=True)
        logger.info("%s: resampled onto its image's grid (nearest neighbour)", path)
    if not binary.any():
        raise NnregError("the mask covers none of its image (no non-zero voxel on the image's grid)", path)
    return binary.astype(np.float32)


def run_registration(request: RunRequest) -> list[str]:
    """Register the request's pair and write its files; returns the summary lines (also in ``register.log``)."""
    began = time.perf_counter()
    paths = output_paths(request)
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    fixed, fixed_geometry = read_image(request.fixed)
    moving, moving_geometry = read_image(request.moving)
    masks = [None if p is None else read_mask(p, g) for p, g in ((request.fixed_mask, fixed_geometry),
                                                                  (request.moving_mask, moving_geometry))]
    labels = read_labels(request.moving_labels, moving_geometry) if request.moving_labels else None
    targets = output_targets(paths)
    check_output_targets(targets)       # every input read and every output writable before the work starts
    for folder in dict.fromkeys(path.parent for _, path in targets):
        if remove_stale_temporaries(folder):
            logger.info("%s: removed the unfinished files of an interrupted run", folder)
    replaced = [str(path) for _, path in targets if path.is_file()]
    if replaced:
        logger.info("replacing %d existing file(s): %s", len(replaced), ", ".join(replaced))
    similarity = choose_similarity(request)
    settings = RegistrationSettings(working_spacing=request.working_spacing,
                                    affine=AffineSettings(similarity=AFFINE_SIMILARITY[similarity]),
                                    finer_grid=dataclasses.replace(FINER_GRID, steps=request.finer_steps),
                                    correction=dataclasses.replace(FINER_CORRECTION, steps=request.correction_steps),
                                    final_spacing=request.final_spacing)
    if similarity == "mind":    # other contrasts: MI for the affine, MIND-SSC refinement, no histogram matching (and
        # so no finer-grid stage: nnreg.inference.finer_grid.finer_grid_applies)
        settings = dataclasses.replace(settings, deformable=settings.deformable.with_overrides(MULTIMODAL_REFINEMENT),
                                       histogram_matching=False)
    if request.affine_only:
        settings = dataclasses.replace(settings, deformable=settings.deformable.with_steps(0))
    lines = [f"fixed {request.fixed}: {list(fixed_geometry.shape)} @ {[round(s, 3) for s in fixed_geometry.spacing]} "
             f"mm; moving {request.moving}: {list(moving_geometry.shape)} @ "
             f"{[round(s, 3) for s in moving_geometry.spacing]} mm (read in {time.perf_counter() - began:.1f} s)"]
    predictor = None
    if request.model is not None and not request.affine_only:
        from nnreg.inference.predictor import nnRegPredictor

        # the network only gives a start: the deformable stage is this command's own (settings.deformable)
        predictor = nnRegPredictor(device=request.device, num_threads=request.threads, instance_optimization=0).\
            initialize_from_trained_model_folder(request.model, request.folds, request.checkpoint,
                                                 request.configuration)
        lines.append(f"model {request.model}: configuration {predictor.configuration_name}, fold(s) "
                     f"{', '.join(predictor.folds)} (its network's field is one start of the deformable stage)")
    registration = register_images(fixed, fixed_geometry, moving, moving_geometry, settings, masks[0], masks[1],
                                   (request.fixed, request.moving), predictor)
    lines += registration.log
    lines += write_outputs(registration, fixed, fixed_geometry, moving, moving_geometry, paths, labels)
    lines.append(f"total: {time.perf_counter() - began:.1f} s")
    if paths.log is not None:
        with atomic_path(paths.log) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        write_json({"fixed": request.fixed, "moving": request.moving, "model": request.model,
                    "seconds": time.perf_counter() - began,
                    "overlap": registration.overlap, "similarity": registration.similarity,
                    "affine_matrix": registration.affine.matrix.tolist(),
                    "affine_centre": registration.affine.centre.tolist(),
                    "affine_translation": registration.affine.translation.tolist(), "log": lines},
                   paths.log.with_suffix(".json"))
    return lines
