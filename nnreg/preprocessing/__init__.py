"""Preprocessing: normalise, resample, crop/pad to the network grid, store; and the inverse map for export."""
from nnreg.preprocessing.grid import GridMapping
from nnreg.preprocessing.preprocessor import grid_mapping_for, preprocess_dataset, preprocess_image

__all__ = ["GridMapping", "grid_mapping_for", "preprocess_dataset", "preprocess_image"]
