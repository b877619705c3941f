"""Quality-control figure per pair: moving, fixed, warped, deformation grid and Jacobian determinant map.

Like Fig. 3 of the seed paper: one row per orthogonal mid-slice (through array axes 0, 1, 2 of the fixed grid).
Conventions: arrays in (i, j, k) order, field ``(H, W, D, 3)`` voxel units, pull. The grid panel draws the lines
of a regular grid on the fixed image mapped by ``phi(x) = x + u(x)`` (in-plane components), i.e. where each
fixed-grid line samples the moving image. The Jacobian panel shows ``det(I + grad u)`` (central differences),
1 = volume kept, < 1 shrinking, > 1 growing; voxels with ``det <= 0`` (folding) are marked in black.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnreg.spatial import jacobian_determinant
from nnreg.utilities.files import atomic_path
from nnreg.utilities.slabs import slab_rows

GRID_STEP = 6  # voxels between drawn grid lines


def _slice(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.take(volume, volume.shape[axis] // 2, axis=axis)


def _plane_axes(axis: int) -> tuple[int, int]:
    return tuple(a for a in range(3) if a != axis)  # type: ignore[return-value]


def _draw_grid(ax, field_slice: np.ndarray, axes: tuple[int, int]) -> None:
    """Deformed grid lines: rows/columns of the slice displaced by the in-plane components of u."""
    rows, cols = field_slice.shape[:2]
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pr = r + field_slice[..., axes[0]]
    pc = c + field_slice[..., axes[1]]
    for i in range(0, rows, GRID_STEP):
        ax.plot(pc[i, :], pr[i, :], color="black", linewidth=0.5)
    for j in range(0, cols, GRID_STEP):
        ax.plot(pc[:, j], pr[:, j], color="black", linewidth=0.5)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect("equal")


def write_qc_figure(fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, field: np.ndarray, path: Path,
                    title: str = "") -> None:
    """Write the QC PNG for one pair (images on the fixed grid, field on the fixed grid). Drawn on a
    :class:`matplotlib.figure.Figure` with the Agg canvas, not through ``pyplot``: no global backend switch and no
    shared figure registry, so it may run in a writer thread (:func:`nnreg.registration.outputs.write_outputs`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    # channels first and contiguous: central differences of a strided view cost ~1.6x as much (1 mm field)
    disp = torch.from_numpy(np.ascontiguousarray(field)).permute(3, 0, 1, 2)[None].contiguous()
    with torch.inference_mode():                 # by slabs: a 0.7 mm scan's field needed ~1.5 GB at once
        det = jacobian_determinant(disp, slab_rows=slab_rows(disp.shape[3] * disp.shape[4]))[0].numpy()
    folding = float((det <= 0).mean() * 100)
    vmax = float(max(np.percentile(fixed, 99.5), np.percentile(moving, 99.5), 1e-6))
    fig = Figure(figsize=(15, 9.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 5)
    for row, axis in enumerate((0, 1, 2)):
        plane = _plane_axes(axis)
        panels = (("moving", _slice(moving, axis)), ("fixed", _slice(fixed, axis)), ("warped", _slice(warped, axis)))
        for col, (name, image) in enumerate(panels):
            axes[row, col].imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            axes[row, col].set_title(f"{name} (axis {axis} mid-slice)" if row == 0 else "")
        _draw_grid(axes[row, 3], _slice(field, axis), plane)
        det_slice = _slice(det, axis)
        shown = axes[row, 4].imshow(det_slice, cmap="RdBu_r", interpolation="nearest",
                                    norm=TwoSlopeNorm(vcenter=1.0, vmin=min(0.0, float(det_slice.min())),
                                                      vmax=max(2.0, float(det_slice.max()))))
        folds = np.ma.masked_where(det_slice > 0, np.ones_like(det_slice))
        axes[row, 4].imshow(folds, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(shown, ax=axes[row, 4], fraction=0.046)
        if row == 0:
            axes[row, 3].set_title("deformation grid")
            axes[row, 4].set_title("Jacobian determinant")
        for col in range(5):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    fig.suptitle(f"{title}   |J| <= 0: {folding:.4f} % of voxels")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
