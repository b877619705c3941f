"""Moments start, then rigid and affine optimisation on an image pyramid (PyTorch, CPU in seconds).

Conventions: see :mod:`nnreg.alignment.grids` and :mod:`nnreg.alignment.sampling`. The result is a physical pull
transform ``T(p) = A (p - c) + c + t`` (LPS mm) from the fixed image's space to the moving image's, ITK's
``AffineTransform`` with centre ``c`` (the fixed image's centre of mass), matrix ``A`` and translation ``t``; so
``sitk.Resample(moving, fixed, T)`` is the moving image aligned to the fixed one.

Parametrisation: ``A = exp([w]_x) (I + L)`` (a rotation ``w`` in radians times a general linear part ``L``, which
the rigid stage keeps at 0), ``t`` starting at the difference of the centres of mass. Each stage runs Adam with a
learning rate that decays linearly to a tenth, on the working grid average-pooled by the stage's factor (the last
stage's factor is lowered for small images, so that its grid keeps ``min_voxels`` voxels along every axis).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nnreg.alignment.grids import pooled_geometry
from nnreg.alignment.sampling import centre_of_mass, sample_affine
from nnreg.alignment.similarity import SIMILARITIES, similarity_loss
from nnreg.dataset.image_io import Geometry
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.optim import Adam

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AffineSettings:
    """Pyramid and optimiser settings: ``stages`` are ``(kind, pool factor, iterations)``, coarse to fine."""

    stages: tuple[tuple[str, int, int], ...] = (("rigid", 4, 60), ("affine", 4, 60), ("affine", 2, 40))
    similarity: str = "ncc"
    ncc_window: int = 5
    lr_rotation: float = 0.02       # radians per Adam step (at the start of a stage)
    lr_translation: float = 0.25    # in voxels of the stage's grid per step
    lr_linear: float = 0.01         # per step for the entries of L
    min_voxels: int = 32            # the last stage's grid keeps at least this many voxels along every axis

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ConfigurationError(f"unknown similarity {self.similarity!r} (choose one of {', '.join(SIMILARITIES)})")
        for kind, factor, iterations in self.stages:
            if kind not in ("rigid", "affine") or factor < 1 or iterations < 0:
                raise ConfigurationError(f"invalid affine stage {(kind, factor, iterations)}")


@dataclass
class AffineResult:
    """The fitted transform and what the optimisation did."""

    matrix: np.ndarray            # A (3x3)
    centre: np.ndarray            # c (3,)
    translation: np.ndarray       # t (3,)
    similarity: float             # final loss of the last stage (lower is better)
    log: list[str] = field(default_factory=list)

    @property
    def homogeneous(self) -> np.ndarray:
        """4x4 ``T`` with ``T p = A (p - c) + c + t``."""
        out = np.eye(4)
        out[:3, :3] = self.matrix
        out[:3, 3] = self.centre + self.translation - self.matrix @ self.centre
        return out

    def describe(self) -> str:
        rotation = _rotation_degrees(self.matrix)
        scales = np.linalg.svd(self.matrix, compute_uv=False)
        return (f"rotation {rotation:.1f} deg, scales {', '.join(f'{s:.3f}' for s in scales)}, translation "
                f"{', '.join(f'{t:.1f}' for t in self.translation)} mm")


def _rotation_degrees(matrix: np.ndarray) -> float:
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    return math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))


def _skew(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=w.dtype)
    return torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])


def _pool(image: torch.Tensor | None, factor: int) -> torch.Tensor | None:
    if image is None or factor == 1:
        return image
    return F.avg_pool3d(image, factor)


class _Transform(torch.nn.Module):
    def __init__(self, centre: np.ndarray, start: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float64))
        self.register_buffer("start", torch.as_tensor(start, dtype=torch.float64))
        self.rotation = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.translation = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.linear = torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))

    def matrix(self) -> torch.Tensor:
        return torch.linalg.matrix_exp(_skew(self.rotation)) @ (torch.eye(3, dtype=torch.float64) + self.linear)

    def homogeneous(self) -> torch.Tensor:
        a = self.matrix()
        offset = self.centre + self.start + self.translation - a @ self.centre
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
        return torch.cat([torch.cat([a, offset[:, None]], dim=1), bottom], dim=0)


def register_affine(fixed: torch.Tensor, fixed_geometry: Geometry, moving: torch.Tensor, moving_geometry: Geometry,
                    settings: AffineSettings = AffineSettings(), fixed_mask: torch.Tensor | None = None,
                    moving_mask: torch.Tensor | None = None) -> AffineResult:
    """Fit ``T`` (fixed -> moving, see module doc) to two normalised ``(1, 1, H, W, D)`` images on their grids."""
    centre = centre_of_mass(fixed[0, 0].numpy(), fixed_geometry)
    start = centre_of_mass(moving[0, 0].numpy(), moving_geometry) - centre
    transform = _Transform(centre, start)
    log = [f"moments: centres of mass {np.round(centre, 1).tolist()} (fixed), shift {np.round(start, 1).tolist()} mm"]
    loss_value = math.nan
    for number, (kind, factor, iterations) in enumerate(settings.stages):
        if number == len(settings.stages) - 1:
            factor = _finest_factor(fixed_geometry, factor, settings.min_voxels)
        began = time.perf_counter()
        f_geo, m_geo = pooled_geometry(fixed_geometry, factor), pooled_geometry(moving_geometry, factor)
        f_img, m_img = _pool(fixed, factor), _pool(moving, factor)
        f_mask, m_mask = _pool(fixed_mask, factor), _pool(moving_mask, factor)
        step = float(np.mean(f_geo.spacing))
        groups = [{"params": [transform.rotation], "lr": settings.lr_rotation},
                  {"params": [transform.translation], "lr": settings.lr_translation * step}]
        if kind == "affine":
            groups.append({"params": [transform.linear], "lr": settings.lr_linear})
        optimizer = Adam(groups)      # not torch.optim: its first use imports torch._dynamo (seconds)
        base = [g["lr"] for g in optimizer.param_groups]
        for iteration in range(iterations):
            for group, lr in zip(optimizer.param_groups, base):
                group["lr"] = lr * (1.0 - 0.9 * iteration / max(iterations - 1, 1))
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(transform.homogeneous(), f_img, f_geo, m_img, m_geo, f_mask, m_mask, settings)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            loss_value = float(_loss(transform.homogeneous(), f_img, f_geo, m_img, m_geo, f_mask, m_mask, settings))
        log.append(f"{kind} at {step:.1f} mm: {iterations} steps, {settings.similarity} loss {loss_value:.4f} "
                   f"({time.perf_counter() - began:.1f} s)")
        logger.debug(log[-1])
    with torch.no_grad():
        matrix = transform.matrix().numpy()
        translation = (transform.start + transform.translation).numpy()
    return AffineResult(matrix, centre, translation, loss_value, log)


def _finest_factor(geometry: Geometry, factor: int, min_voxels: int) -> int:
    """``factor``, reduced until the pooled grid has ``min_voxels`` along every axis (small images: finer level)."""
    while factor > 1 and min(geometry.shape) // factor < min_voxels:
        factor //= 2
    return max(factor, 1)


def _loss(matrix: torch.Tensor, fixed: torch.Tensor, fixed_geometry: Geometry, moving: torch.Tensor,
          moving_geometry: Geometry, fixed_mask: torch.Tensor | None, moving_mask: torch.Tensor | None,
          settings: AffineSettings) -> torch.Tensor:
    warped = sample_affine(moving, moving_geometry, fixed_geometry, matrix)
    weight, normaliser = fixed_mask, None
    if moving_mask is not None:
        warped_mask = sample_affine(moving_mask, moving_geometry, fixed_geometry, matrix)
        weight = warped_mask if weight is None else weight * warped_mask
        # divided by the fixed side's count, not by the weights': otherwise a transform gains by moving the moving
        # mask's zeros (or its image's edge) over the fixed voxels it matches worst (measured: a 47 degree turn)
        normaliser = float(fixed.numel()) if fixed_mask is None else fixed_mask.sum()
    return similarity_loss(settings.similarity, fixed, warped, weight, settings.ncc_window, normaliser)
