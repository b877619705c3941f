"""The anchors of ``benchmarks/accuracy.py``: classical and optimisation-based registration tools, each called through
its own Python package with its documented settings, each giving a challenge-format field.

Every anchor maps ``(fixed, moving on the fixed grid, geometry, settings)`` to a voxel-unit pull field on the fixed
grid, ``(i, j, k, 3)`` with ``warped(x) = moving(x + u(x))`` (what ``nnreg_evaluate`` reads). The tools' physical ITK
displacements (mm, LPS) are converted with :func:`itk_to_voxel_field`. Packages (``pip install -e '.[bench]'``):

* ``demons``: SimpleITK fast symmetric forces demons, shrink 4/2/1, 100/50/25 iterations, σ 1 voxel (nnreg's own).
* ``greedy`` / ``greedy_sv``: ``picsl-greedy``, the deformable call of Greedy's quick start for brain MRI
  (``-m WNCC 2x2x2 -n 100x50x10``, a 5³ weighted local NCC on three levels), without / with ``-sv`` (stationary
  velocity, log-demons). No affine stage: the pairs are already affinely aligned (Learn2Reg / LUMIR).
* ``convexadam``: ``convexadam``'s ``convex_adam_pt`` with the package defaults; ``convexadam_lumir`` with the
  brain settings used for LUMIR 2024 (the ConvexAdam-MIND brain configuration of junyuchen245/MIR).
* ``ants_synquick`` / ``ants_syn``: ``antspyx``: ``antsRegistrationSyNQuick[so]`` and the LUMIR 2024 baseline's
  call ``antsRegistrationSyN[so]``, ``syn_metric="CC"``, ``reg_iterations=(200, 200, 200)``. These take minutes
  per pair: their fields are cached (:func:`cache_key`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

logger = logging.getLogger("nnreg.benchmarks.anchors")

Register = Callable[[np.ndarray, np.ndarray, Any, dict[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Anchor:
    """One row of the comparison: a tool (``module`` to import, ``distribution`` to pip-install) and its settings."""

    name: str                       # method name: the output folder and the JSON row's ``method``
    label: str                      # what the table prints
    module: str                     # importable module of the package
    distribution: str               # its PyPI name (pip install ...)
    register: Register
    settings: dict[str, Any] = field(default_factory=dict)
    cached: bool = False            # minutes per pair: reuse fields from --anchor-cache

    def available(self) -> bool:
        """Whether the package imports (a missing or broken package is a table row, never a crash)."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


# -- conversions ------------------------------------------------------------------------------------------------
def itk_to_voxel_field(displacement_mm: np.ndarray, geometry: Any) -> np.ndarray:
    """ITK physical displacement (x, y, z mm, on the fixed grid, (i, j, k, 3)) -> voxel-unit pull field.

    ITK maps fixed point ``p`` to ``p + d(p)`` in the moving image (a pull field); with ``A = Direction ·
    diag(spacing)`` the voxel displacement is ``u = A^-1 d`` (the inverse of nnreg's ``--itk`` export).
    """
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    matrix = direction @ np.diag(np.asarray(geometry.spacing, dtype=np.float64))
    return np.einsum("ab,ijkb->ijka", np.linalg.inv(matrix), displacement_mm).astype(np.float32)


def sitk_field_to_voxels(field: Any, geometry: Any) -> np.ndarray:
    """A SimpleITK vector image of physical displacements on the fixed grid -> voxel-unit pull field."""
    import SimpleITK as sitk

    return itk_to_voxel_field(sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3), geometry)


@contextlib.contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """Send what native code prints (Greedy's per-iteration lines, ANTs, ConvexAdam) to ``log`` (file descriptors
    1 and 2, which Python-level redirection cannot catch); nothing changes when ``log`` is None."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "a") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


# -- the tools -----------------------------------------------------------------------------------------------------
def demons(fixed: np.ndarray, moving: np.ndarray, geometry: Any, settings: dict[str, Any]) -> np.ndarray:
    """SimpleITK fast symmetric forces demons on a Gaussian pyramid, each level warm-started from the last."""
    import SimpleITK as sitk

    from nnreg.inference.resample import to_sitk

    fixed_image = to_sitk(fixed.astype(np.float32), geometry)
    moving_image = to_sitk(moving.astype(np.float32), geometry)
    result = None
    for shrink, iterations in zip(settings["shrink"], settings["iterations"]):
        if shrink > 1:
            sigma = 0.5 * shrink * min(geometry.spacing)
            fixed_level = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed_image, sigma), [shrink] * 3)
            moving_level = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving_image, sigma), [shrink] * 3)
        else:
            fixed_level, moving_level = fixed_image, moving_image
        if result is None:
            initial = sitk.Image(fixed_level.GetSize(), sitk.sitkVectorFloat64, 3)
            initial.CopyInformation(fixed_level)
        else:
            initial = sitk.Resample(result, fixed_level, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    sitk.sitkVectorFloat64)
        filter_ = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        filter_.SetNumberOfIterations(iterations)
        filter_.SetSmoothDisplacementField(True)
        filter_.SetStandardDeviations(settings["sigma"])
        result = filter_.Execute(fixed_level, moving_level, initial)
    return sitk_field_to_voxels(result, geometry)


def greedy(fixed: np.ndarray, moving: np.ndarray, geometry: Any, settings: dict[str, Any]) -> np.ndarray:
    """Greedy's deformable mode through ``picsl_greedy.Greedy3D().execute`` with in-memory SimpleITK images.

    Its warp holds, for every fixed voxel centre, the physical displacement to the corresponding moving point (Greedy
    documentation, quick start): an ITK pull field.
    """
    from picsl_greedy import Greedy3D

    from nnreg.inference.resample import to_sitk

    command = f"-d 3 -i fix mov -m {settings['metric']} -n {settings['iterations']}"
    command += " -sv" if settings.get("sv") else ""
    tool = Greedy3D()
    tool.execute(command + " -o warp", fix=to_sitk(fixed.astype(np.float32), geometry),
                 mov=to_sitk(moving.astype(np.float32), geometry), warp=None)
    return sitk_field_to_voxels(tool["warp"], geometry)


def convexadam(fixed: np.ndarray, moving: np.ndarray, geometry: Any, settings: dict[str, Any]) -> np.ndarray:
    """``convexAdam.convex_adam_MIND.convex_adam_pt`` on the (i, j, k) arrays, on the CPU in float32.

    It returns ``(H, W, D, 3)`` voxel displacements in the input's axis order, sampled as ``moving(x + u(x))``
    (its Adam stage samples the moving features at ``grid + u``): already the challenge convention. float32 is
    what the package itself falls back to on a CPU (it prints a warning when asked for its float16 default).
    """
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    field_ = convex_adam_pt(img_fixed=torch.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32)),
                            img_moving=torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32)),
                            dtype=torch.float32, device=torch.device("cpu"), **settings)
    return np.asarray(field_, dtype=np.float32)


def ants(fixed: np.ndarray, moving: np.ndarray, geometry: Any, settings: dict[str, Any]) -> np.ndarray:
    """``ants.registration`` on images with the fixed geometry; its forward transforms composed into one physical
    displacement field on the fixed grid (``apply_transforms(..., compose=...)``), converted to voxels."""
    import ants as antspy

    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)

    def image(array: np.ndarray) -> Any:
        return antspy.from_numpy(np.ascontiguousarray(array, dtype=np.float32), origin=list(geometry.origin),
                                 spacing=list(geometry.spacing), direction=direction)

    fixed_image, moving_image = image(fixed), image(moving)
    with tempfile.TemporaryDirectory(prefix="nnreg_ants_") as folder:
        result = antspy.registration(fixed=fixed_image, moving=moving_image, outprefix=str(Path(folder) / "reg_"),
                                     **settings)
        composed = antspy.apply_transforms(fixed=fixed_image, moving=moving_image,
                                           transformlist=result["fwdtransforms"], compose=str(Path(folder) / "all_"))
        displacement = antspy.image_read(composed).numpy()              # (i, j, k, 3), mm, LPS
    return itk_to_voxel_field(displacement, geometry)


DEMONS_SETTINGS = {"shrink": [4, 2, 1], "iterations": [100, 50, 25], "sigma": 1.0}
GREEDY_SETTINGS = {"metric": "WNCC 2x2x2", "iterations": "100x50x10"}    # Greedy quick start, deformable stage
# The LUMIR 2024 ConvexAdam brain configuration ("λ 1.6, grid spacing 2, displacement half-width 2, 80 Adam
# iterations, smoothing 1") in the package's own parameter names: λ -> lambda_weight, grid spacing of the discrete
# correlation step -> grid_sp, its displacement half-width (in grid steps) -> disp_hw, Adam iterations ->
# selected_niter, smoothing kernel of the final field -> selected_smooth (1: the package applies no smoothing),
# Adam on a half-resolution grid -> grid_sp_adam 2; MIND-SSC radius 1 / dilation 2 and inverse consistency on, as
# the package defaults.
CONVEXADAM_LUMIR = {"mind_r": 1, "mind_d": 2, "lambda_weight": 1.6, "grid_sp": 2, "disp_hw": 2,
                    "selected_niter": 80, "selected_smooth": 1, "grid_sp_adam": 2, "ic": True}
# LUMIR_L2R "SyN (ATNs)/Infer_SyN.py": ants.registration(fixed, moving, 'antsRegistrationSyN[so]', syn_metric='CC',
# reg_iterations=(200, 200, 200)). antspyx's antsRegistrationSyN[x] branch builds its own stages (CC radius 2,
# 100x70x50x20 on shrink 8x4x2x1, since at least antspyx 0.4): the call is reproduced as written, what runs is that.
ANTS_SYN_LUMIR = {"type_of_transform": "antsRegistrationSyN[so]", "syn_metric": "CC",
                  "reg_iterations": [200, 200, 200]}

ANCHORS: dict[str, Anchor] = {a.name: a for a in (
    Anchor("demons", "SimpleITK demons (4/2/1, 100/50/25)", "SimpleITK", "SimpleITK", demons, DEMONS_SETTINGS),
    Anchor("greedy", "Greedy (WNCC 2x2x2, 100x50x10)", "picsl_greedy", "picsl-greedy", greedy, GREEDY_SETTINGS),
    Anchor("greedy_sv", "Greedy -sv (WNCC 2x2x2, 100x50x10)", "picsl_greedy", "picsl-greedy", greedy,
           {**GREEDY_SETTINGS, "sv": True}),
    Anchor("convexadam", "ConvexAdam, package defaults", "convexAdam", "convexadam", convexadam, {}),
    Anchor("convexadam_lumir", "ConvexAdam, LUMIR brain settings", "convexAdam", "convexadam", convexadam,
           CONVEXADAM_LUMIR),
    Anchor("ants_synquick", "ANTs antsRegistrationSyNQuick[so]", "ants", "antspyx", ants,
           {"type_of_transform": "antsRegistrationSyNQuick[so]"}, cached=True),
    Anchor("ants_syn", "ANTs SyN, LUMIR call (antsRegistrationSyN[so], CC)", "ants", "antspyx", ants,
           ANTS_SYN_LUMIR, cached=True),
)}


def parse_anchors(text: str) -> list[str]:
    """``all``, ``none`` or comma-separated anchor names -> names in table order; an unknown name stops the run."""
    text = text.strip()
    if text == "all":
        return list(ANCHORS)
    names = [] if text in ("", "none") else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANCHORS]
    if unknown:
        raise SystemExit(f"--anchors: unknown {', '.join(unknown)} (known: {', '.join(ANCHORS)}, all, none)")
    return [n for n in ANCHORS if n in names]


# -- the cache of slow anchors --------------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(anchor: Anchor, fixed: Path, moving: Path) -> str:
    """The pair (the two image files' contents) and the settings (anchor, settings, package version) as one hash."""
    identity = {"anchor": anchor.name, "settings": anchor.settings, "version": anchor.version(),
                "fixed": file_digest(fixed), "moving": file_digest(moving)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def register_pair(anchor: Anchor, fixed_path: Path, moving_path: Path, out: Path, cache: Path | None,
                  log: Path | None = None) -> tuple[float, bool]:
    """Write the pair's field to ``out``; (seconds from image files to written field, whether it came from the cache).

    With a ``cache`` folder, a cached anchor's field is copied from ``cache/<anchor>/<key>.nii.gz`` when present, and
    its seconds are the ones recorded beside it (``<key>.json``) when it was computed; else it is computed, written
    to ``out`` and stored in the cache.
    """
    from nnreg.dataset.image_io import read_image, write_displacement
    from nnreg.inference.export import pair_outputs
    from nnreg.inference.resample import align_moving
    from nnreg.utilities.files import atomic_path, read_json, write_json

    target = pair_outputs(out, fixed_path, moving_path).displacement
    stored = record = None
    if cache is not None and anchor.cached:
        key = cache_key(anchor, fixed_path, moving_path)
        stored, record = cache / anchor.name / f"{key}.nii.gz", cache / anchor.name / f"{key}.json"
        if stored.is_file() and record.is_file():
            with atomic_path(target) as tmp:
                shutil.copyfile(stored, tmp)
            return float(read_json(record)["seconds"]), True
    start = time.perf_counter()
    fixed, geometry = read_image(fixed_path)
    moving, moving_geometry = read_image(moving_path)
    moving = align_moving(moving, moving_geometry, geometry, str(moving_path))
    with output_to(log):
        field_ = anchor.register(fixed, moving, geometry, anchor.settings)
    write_displacement(field_, target, geometry)
    seconds = time.perf_counter() - start
    if stored is not None and record is not None:
        with atomic_path(stored) as tmp:
            shutil.copyfile(target, tmp)
        write_json({"seconds": seconds, "anchor": anchor.name, "settings": anchor.settings,
                    "version": anchor.version(), "fixed": str(fixed_path), "moving": str(moving_path)}, record)
    return seconds, False
