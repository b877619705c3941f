"""Registering two user images end to end: intensity normalisation, working grids, the affine stage
(:mod:`nnreg.alignment`), the deformable refinement and the outputs on the user's own grids."""
from nnreg.registration.outputs import OutputPaths, transform_files, write_outputs
from nnreg.registration.pipeline import Registration, RegistrationSettings, register_images

__all__ = ["OutputPaths", "transform_files", "write_outputs", "Registration", "RegistrationSettings",
           "register_images"]
