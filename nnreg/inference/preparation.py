"""Turn a (fixed, moving) pair from files or arrays into network inputs, keeping what export needs.

Conventions: arrays in (i, j, k) order (nibabel's), geometry in ITK physical space. The moving image is first
brought onto the fixed grid (:mod:`nnreg.inference.resample`), so both share one :class:`GridMapping` and the
predicted field lives on the fixed image's original grid after :meth:`GridMapping.field_to_original`.
This module is imported by reader worker processes: it holds plain functions of picklable arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nnreg.dataset.image_io import Geometry, read_image
from nnreg.inference.finer_grid import finer_mapping
from nnreg.inference.resample import align_moving
from nnreg.planning.plans import ConfigurationPlan
from nnreg.preprocessing.grid import GridMapping
from nnreg.preprocessing.normalization import normalize, with_intensity_reference
from nnreg.preprocessing.preprocessor import grid_mapping_for
from nnreg.utilities.errors import NnregError


@dataclass
class PreparedPair:
    """One pair ready for the network, plus the original-grid arrays that export and QC use."""

    fixed_network: np.ndarray        # (*config.shape) float32, normalised
    moving_network: np.ndarray       # (*config.shape) float32, normalised, moving already on the fixed grid
    mapping: GridMapping             # fixed original grid <-> network grid
    fixed_geometry: Geometry         # original fixed grid: the output field lives here
    fixed: np.ndarray                # original fixed image
    moving_on_fixed: np.ndarray      # moving image on the fixed grid (resampled only if the grids differ)
    moving_geometry: Geometry        # the moving image's own grid (for the ITK export and warped labels)
    fixed_normalised: np.ndarray | None = None    # original-grid images normalised as for the network: what the
    moving_normalised: np.ndarray | None = None   # finer-grid stage measures the similarity on (finer_grid.py)


def default_geometry(shape: tuple[int, ...], config: ConfigurationPlan) -> Geometry:
    """Geometry assumed for a bare array: the planned original spacing, origin 0, identity direction."""
    spacing = tuple(float(s) / float(f) for s, f in zip(config.spacing, config.resampling_factor))
    return Geometry(tuple(int(s) for s in shape), spacing, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _check_array(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise NnregError(f"expected a 3D image, got an array of shape {array.shape}", name)
    if not np.isfinite(array).all():
        raise NnregError("image contains NaN or infinite values", name)
    return np.ascontiguousarray(array, dtype=np.float32)


def prepare_arrays(fixed: np.ndarray, moving: np.ndarray, config: ConfigurationPlan,
                   fixed_geometry: Geometry | None = None, moving_geometry: Geometry | None = None,
                   fixed_name: str = "fixed image", moving_name: str = "moving image") -> PreparedPair:
    """Check, align and preprocess one pair of original-grid arrays."""
    fixed = _check_array(fixed, fixed_name)
    moving = _check_array(moving, moving_name)
    fixed_geometry = fixed_geometry or default_geometry(fixed.shape, config)
    moving_geometry = moving_geometry or default_geometry(moving.shape, config)
    for array, geometry, name in ((fixed, fixed_geometry, fixed_name), (moving, moving_geometry, moving_name)):
        if tuple(array.shape) != tuple(geometry.shape):
            raise NnregError(f"array shape {list(array.shape)} does not match its geometry {list(geometry.shape)}",
                             name)
    moving_on_fixed = align_moving(moving, moving_geometry, fixed_geometry, moving_name)
    mapping = grid_mapping_for(fixed_geometry, config)
    # normalised once (a foreign intensity range is one warning naming the file), as the training data was
    # preprocessed (nnreg.preprocessing.preprocessor.preprocess_image), then resampled onto the network grid
    fixed_normalised = normalize(fixed, config.normalization, fixed_name)
    moving_normalised = normalize(moving_on_fixed, config.normalization, moving_name)
    keep = finer_mapping(mapping) is not None    # only a finer-grid stage reads them (they travel from reader workers)
    return PreparedPair(mapping.to_network(fixed_normalised, order=1), mapping.to_network(moving_normalised, order=1),
                        mapping, fixed_geometry, fixed, moving_on_fixed, moving_geometry,
                        fixed_normalised if keep else None, moving_normalised if keep else None)


def with_training_reference(config: ConfigurationPlan, model_folder: str | Path) -> ConfigurationPlan:
    """``config`` whose fixed_range normalisation knows the training intensities (the model folder's
    ``dataset_fingerprint.json``), so that an image in other units is mapped onto them instead of clipped."""
    scheme = with_intensity_reference(config.normalization, Path(model_folder) / "dataset_fingerprint.json")
    return config if scheme is config.normalization else replace(config, normalization=scheme)


def prepare_files(fixed_path: str | Path, moving_path: str | Path, config: ConfigurationPlan) -> PreparedPair:
    """Read and prepare one pair of image files (runs in reader workers)."""
    fixed, fixed_geometry = read_image(fixed_path)
    moving, moving_geometry = read_image(moving_path)
    return prepare_arrays(fixed, moving, config, fixed_geometry, moving_geometry, str(fixed_path), str(moving_path))
