"""Masks that restrict the refinement's similarity (``nnreg_register --fixed-mask / --moving-mask``), as ANTs' ``-x``
restricts every stage's metric: a voxel of the fixed grid counts with the weight ``fixed(x) * moving(x + u(x))``.

Conventions (those of :mod:`nnreg.inference.instance_optimization`): tensors ``(1, 1, H, W, D)`` in array-axis
order, weights in [0, 1] (a binary mask, or its average over coarser voxels); ``fixed`` lives on the fixed image's
grid, ``moving`` on the grid of the image the stage warps, **pull**: ``weight(x) = moving(x + u(x))``. Each stage
takes the moving mask through the field it **starts** from (:meth:`SimilarityMasks.on_fixed`) and keeps that weight
for its steps. Why not through the field being optimised: then the similarity's gradient also moves the mask, and
the optimum shrinks what the mask leaves out (measured on real brains with a cavity: the field around it 0.6-1.5 mm
farther from the intact pair's, documentation/benchmarks.md). Without masks every stage computes what it did before
(the weights are never multiplied in).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnreg.losses.edge_weights import difference_weights
from nnreg.spatial import warp


@dataclass(frozen=True)
class SimilarityMasks:
    """The fixed and the moving weight (either may be None: that side is not restricted)."""

    fixed: torch.Tensor | None = None
    moving: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("fixed", "moving"):
            weight = getattr(self, name)
            if weight is not None and (weight.dim() != 5 or tuple(weight.shape[:2]) != (1, 1)):
                raise ValueError(f"expected a (1, 1, H, W, D) {name} mask, got {tuple(weight.shape)}")

    def checked(self, fixed_shape: tuple[int, ...], moving_shape: tuple[int, ...]) -> "SimilarityMasks":
        """These masks, float32, after checking that they lie on the two images' grids."""
        for name, weight, shape in (("fixed", self.fixed, fixed_shape), ("moving", self.moving, moving_shape)):
            if weight is not None and tuple(weight.shape[2:]) != tuple(shape[2:]):
                raise ValueError(f"the {name} mask's grid {tuple(weight.shape[2:])} is not its image's "
                                 f"{tuple(shape[2:])}")
        return SimilarityMasks(*(None if w is None else w.detach().float() for w in (self.fixed, self.moving)))

    def resized(self, size: tuple[int, int, int]) -> "SimilarityMasks":
        """Both weights on the grid ``size`` (the stage's; averaged as :func:`downsample` averages images)."""
        return SimilarityMasks(*(None if w is None else downsample(w, size) for w in (self.fixed, self.moving)))

    def on_fixed(self, field: torch.Tensor | None) -> "SimilarityMasks":
        """One weight on the fixed grid: the fixed one times the moving one taken through ``field`` (the stage's start;
        None: the identity, the moving weight already on the fixed grid)."""
        if self.moving is None:
            return self
        with torch.no_grad():
            moving = self.moving if field is None else warp(self.moving, field.to(self.moving.device))
        return SimilarityMasks(moving if self.fixed is None else self.fixed * moving, None)


def downsample(image: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Image on the coarser grid ``size`` (box average for integer factors, trilinear otherwise)."""
    if tuple(image.shape[2:]) == size:
        return image
    if all(s % n == 0 for s, n in zip(image.shape[2:], size)):
        return F.avg_pool3d(image, tuple(s // n for s, n in zip(image.shape[2:], size)))
    return F.interpolate(image, size=size, mode="trilinear", align_corners=False)


def edge_weights_on_grid(target: torch.Tensor, grid: tuple[int, int, int], kappa: float, floor: float,
                         weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The regulariser's edge-aware weights on the velocity ``grid`` from the fixed image ``target``
    (:func:`nnreg.losses.edge_weights.difference_weights`); with a similarity ``weight`` (the masks on the fixed
    grid) only the velocity voxels whose every image voxel it covers see edges, from those image voxels alone."""
    if weight is None:
        return difference_weights(downsample(target, grid), kappa, floor)
    covered = (weight > 0).to(target.dtype)
    inside = downsample(covered, grid) > 1.0 - 1e-4        # every image voxel of the velocity voxel covered
    return difference_weights(downsample(target * covered, grid), kappa, floor, inside)
