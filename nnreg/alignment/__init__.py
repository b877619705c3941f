"""Affine pre-alignment of two images in physical space: canonical working grids, moments start, rigid then affine
optimisation on a pyramid (see :mod:`nnreg.alignment.grids` for the conventions)."""
from nnreg.alignment.affine import AffineResult, AffineSettings, register_affine
from nnreg.alignment.grids import index_to_physical, physical_to_index, pooled_geometry, working_geometry
from nnreg.alignment.sampling import centre_of_mass, sample_affine, sample_at_indices, sample_field_at

__all__ = ["AffineResult", "AffineSettings", "register_affine", "index_to_physical", "physical_to_index",
           "pooled_geometry", "working_geometry", "centre_of_mass", "sample_affine", "sample_at_indices",
           "sample_field_at"]
