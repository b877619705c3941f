"""Ground-truth files of an evaluation: paths by the official ``images`` -> kind rule, loading, grid checks.

Conventions: volumes are read with nibabel's ``get_fdata()`` (float64, nibabel ``(i, j, k)`` order),
exactly as the official evaluator, so label and intensity comparisons see the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnreg.utilities.errors import NnregError

GRID_TOLERANCE_MM = 1e-3


def ground_truth_file(root: Path, relative_image: str, kind: str) -> Path:
    """``root / relative_image`` with ``images`` replaced by ``kind`` (labels, landmarks, masks, ...)."""
    rel = relative_image[2:] if relative_image.startswith("./") else relative_image
    return Path(root) / rel.replace("images", kind)


def image_file(root: Path, relative_image: str) -> Path:
    rel = relative_image[2:] if relative_image.startswith("./") else relative_image
    return Path(root) / rel


def _load(path: Path, what: str):  # -> nibabel image
    import nibabel as nib

    if not path.is_file():
        raise NnregError(f"{what} not found", path)
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise NnregError(f"cannot read {what} ({str(exc).strip().splitlines()[0]})", path) from None


def grid_of(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the header only."""
    img = _load(path, what)
    return tuple(int(s) for s in img.shape), np.asarray(img.affine)


def load_volume(path: Path, what: str, reference: Path | None = None) -> np.ndarray:
    """Read a 3D volume as float64; with ``reference`` (its image) check that both share one grid."""
    img = _load(path, what)
    if len(img.shape) != 3:
        raise NnregError(f"{what} must be a 3D volume, found shape {tuple(img.shape)}", path)
    if reference is not None:
        ref_shape, ref_affine = grid_of(reference, "image")
        if tuple(img.shape) != ref_shape:
            raise NnregError(f"{what} is on a different grid than its image {reference.name}: shape "
                             f"{tuple(img.shape)} vs {ref_shape}", path)
        if not np.allclose(np.asarray(img.affine), ref_affine, atol=GRID_TOLERANCE_MM):
            raise NnregError(f"{what} is on a different grid than its image {reference.name}: affine differs "
                             f"by {np.abs(np.asarray(img.affine) - ref_affine).max():.4g} mm", path)
    try:
        return np.asarray(img.get_fdata())
    except Exception as exc:
        raise NnregError(f"cannot read {what} ({str(exc).strip().splitlines()[0]})", path) from None
