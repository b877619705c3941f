"""The methods of ``benchmarks/register.py``: ``nnreg_register`` as a user runs it, and the anchors with their
documented calls (ANTs ``antsRegistrationSyNQuick[s]``, Greedy ``-a`` then deformable, SimpleITK affine + demons, the
zero field). Each runner takes (fixed file, moving file, output folder, threads) and returns the whole transform as a
Learn2Reg field on the fixed grid (voxels, pull: ``warped(x) = moving(x + u(x))``) and extra JSON.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import anchors

PACKAGES = {"ants": ("ants", "antspyx"), "greedy": ("picsl_greedy", "picsl-greedy"),
            "demons": ("SimpleITK", "SimpleITK")}
GREEDY = {"metric": "NCC 2x2x2", "iterations": "100x50x10"}

# -- methods -------------------------------------------------------------------------------------------------------
def run_nnreg(fixed: Path, moving: Path, out: Path, threads: int | None, model: str | None = None,
              moving_mask: Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """``nnreg_register`` as the user runs it (``-m model``, ``--moving-mask`` when given); (its field, extra JSON:
    the log's total)."""
    from nnreg.dataset.image_io import read_displacement

    command = ["nnreg_register", "--fixed", str(fixed), "--moving", str(moving), "-o", str(out)]
    command += ["--threads", str(threads)] if threads else []
    command += ["-m", model] if model else []
    command += ["--moving-mask", str(moving_mask)] if moving_mask else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nnreg_register failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    log = json.loads((out / "register.json").read_text()) if (out / "register.json").is_file() else {}
    return read_displacement(out / "field.nii.gz"), {"log_seconds": log.get("seconds")}


def _images(fixed: Path, moving: Path) -> tuple[Any, Any, Any]:
    """(fixed image, moving image on the fixed grid, fixed geometry) as SimpleITK images."""
    import SimpleITK as sitk

    from nnreg.dataset.image_io import read_image
    from nnreg.inference.resample import align_moving, to_sitk

    f, geometry = read_image(fixed)
    m, m_geometry = read_image(moving)
    m = align_moving(m, m_geometry, geometry, str(moving))
    return sitk.Cast(to_sitk(f, geometry), sitk.sitkFloat32), sitk.Cast(to_sitk(m, geometry), sitk.sitkFloat32), \
        geometry


def _ants(fixed: Path, moving: Path, out: Path, threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    from nnreg.dataset.image_io import read_image
    from nnreg.inference.resample import align_moving

    f, geometry = read_image(fixed)
    m, m_geometry = read_image(moving)
    with anchors.output_to(out / "ants.log"):
        field = anchors.ants(f, align_moving(m, m_geometry, geometry), geometry,
                             {"type_of_transform": "antsRegistrationSyNQuick[s]"})
    return field, {}


def _greedy(fixed: Path, moving: Path, out: Path, threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    from picsl_greedy import Greedy3D

    fix, mov, geometry = _images(fixed, moving)
    base = f"-d 3 -m {GREEDY['metric']} -n {GREEDY['iterations']}" + (f" -threads {threads}" if threads else "")
    tool = Greedy3D()
    with anchors.output_to(out / "greedy.log"):
        tool.execute(f"{base} -a -dof 12 -ia-image-centers -i fix mov -o aff", fix=fix, mov=mov, aff=None)
        tool.execute(f"{base} -i fix mov -it aff -o warp", warp=None)
        tool.execute("-d 3 -rf fix -rc composed -r warp aff", composed=None)
    return anchors.sitk_field_to_voxels(tool["composed"], geometry), {}


def sitk_affine(fix: Any, mov: Any) -> Any:
    """SimpleITK affine registration: centred (moments) start, Mattes MI, gradient descent on shrink 4/2/1."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    initial = sitk.CenteredTransformInitializer(fix, mov, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fix, mov)


def _demons(fixed: Path, moving: Path, out: Path, threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    import SimpleITK as sitk

    from nnreg.dataset.image_io import Geometry

    fix, mov, geometry = _images(fixed, moving)
    affine = sitk_affine(fix, mov)
    moved_image = sitk.Resample(mov, fix, affine, sitk.sitkLinear, 0.0)
    moved_image = sitk.HistogramMatching(moved_image, fix, 1024, 7, True)   # demons compares intensities directly
    moved = sitk.GetArrayFromImage(moved_image).transpose(2, 1, 0)
    f = sitk.GetArrayFromImage(fix).transpose(2, 1, 0)
    d_voxels = anchors.demons(f, moved, geometry, anchors.DEMONS_SETTINGS)   # on the fixed grid, after the affine
    matrix = np.asarray(geometry.direction).reshape(3, 3) * np.asarray(geometry.spacing)
    d_mm = np.einsum("ab,ijkb->ijka", matrix, d_voxels)
    image = sitk.GetImageFromArray(np.ascontiguousarray(d_mm.transpose(2, 1, 0, 3), dtype=np.float64), isVector=True)
    image.CopyInformation(fix)
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(image)])   # p -> A(p + d(p))
    total = sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, fix.GetSize(), fix.GetOrigin(),
                                              fix.GetSpacing(), fix.GetDirection())
    assert isinstance(geometry, Geometry)
    return anchors.sitk_field_to_voxels(total, geometry), {}


def _zero(fixed: Path, moving: Path, out: Path, threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    from nnreg.dataset.image_io import read_image

    _, geometry = read_image(fixed)
    return np.zeros((*geometry.shape, 3), dtype=np.float32), {}


RUNNERS: dict[str, Callable[..., tuple[np.ndarray, dict[str, Any]]]] = {
    "nnreg": run_nnreg, "ants": _ants, "greedy": _greedy, "demons": _demons, "zero": _zero}
LABELS = {"nnreg": "nnreg_register (no model)", "nnreg_model": "nnreg_register -m MODEL", "ants": "ANTs antsRegistrationSyNQuick[s]",
          "greedy": "Greedy -a, then deformable (NCC 2x2x2)", "demons": "SimpleITK affine + demons",
          "zero": "zero field"}


def available(method: str) -> bool:
    """Whether the method's package imports (a missing package is a row 'not installed')."""
    if method not in PACKAGES:
        return True
    import importlib

    try:
        importlib.import_module(PACKAGES[method][0])
    except ImportError:
        return False
    return True
