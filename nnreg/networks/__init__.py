"""Registration networks: the seed paper's cascade (with CA, LK, BF, LC), the VoxelMorph baseline, and their cost.

``build_network(architecture)`` is the single entry point; ``model(moving, fixed)`` returns a
:class:`RegistrationOutput` (full-resolution voxel-unit pull field + per-level fields, see ``nnreg.spatial``),
and ``model.divisor`` is the factor input shapes must be divisible by.
"""
from nnreg.networks.base import RegistrationNetwork
from nnreg.networks.build import NETWORK_CLASSES, build_network, resolve_network_class
from nnreg.networks.cascade import CascadeRegNet
from nnreg.networks.co_attention import affordable_co_attention_levels
from nnreg.networks.output import LevelOutput, RegistrationOutput
from nnreg.networks.variants import (
    CPU_VARIANTS,
    PAPER_VARIANTS,
    cpu_variants,
    default_architecture,
    named_architecture,
    paper_variants,
    voxelmorph_architecture,
)
from nnreg.networks.voxelmorph import VoxelMorph

__all__ = [
    "build_network",
    "resolve_network_class",
    "NETWORK_CLASSES",
    "RegistrationOutput",
    "RegistrationNetwork",
    "LevelOutput",
    "CascadeRegNet",
    "affordable_co_attention_levels",
    "VoxelMorph",
    "default_architecture",
    "voxelmorph_architecture",
    "paper_variants",
    "cpu_variants",
    "named_architecture",
    "PAPER_VARIANTS",
    "CPU_VARIANTS",
]
