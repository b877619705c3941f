"""The map between an original image grid and the network grid of a configuration, both ways.

Conventions: arrays in array-axis order (i, j, k); coordinates in voxel indices; resampling aligns voxel
*centres* of equal physical extent (voxel centre i of a grid with spacing s sits at (i + 0.5)·s from the
grid's edge, i.e. ``align_corners=False``). With ``f`` = target spacing / original spacing per axis and
``c`` = ``crop_start`` (first network voxel in the resampled grid, may be negative = zero padding):

    original index  x = (p + c + 0.5)·f − 0.5   for network index p.

Displacement fields are voxel-unit pull fields (``warped(x) = moving(x + u(x))``); mapping one from the
network grid to the original grid samples it at p(x) and multiplies component a by f[a]. Outside the
network box the field is extended by its edge values (not zeros, which would tear the field at the box edge).

scipy.ndimage and acvl-utils (whose import pulls in blosc2: 0.6 s together) are imported where they are used, not
with the module: every command imports this one, and ``nnreg_register`` without a model never calls them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GridMapping:
    """Original grid (``original_shape``) <-> network grid (``shape``) of one configuration."""

    original_shape: tuple[int, int, int]
    factor: tuple[float, float, float]
    crop_start: tuple[int, int, int]
    shape: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GridMapping":
        return cls(tuple(int(x) for x in d["original_shape"]), tuple(float(x) for x in d["factor"]),
                   tuple(int(x) for x in d["crop_start"]), tuple(int(x) for x in d["shape"]))

    @property
    def is_pure_crop(self) -> bool:
        return all(f == 1.0 for f in self.factor)

    def network_to_original_coords(self, axis: int, p: np.ndarray) -> np.ndarray:
        return (p + self.crop_start[axis] + 0.5) * self.factor[axis] - 0.5

    def original_to_network_coords(self, axis: int, x: np.ndarray) -> np.ndarray:
        return (x + 0.5) / self.factor[axis] - 0.5 - self.crop_start[axis]

    # -- original -> network -------------------------------------------------------------------------
    def to_network(self, array: np.ndarray, order: int) -> np.ndarray:
        """Resample an original-grid array onto the network grid (order 1 images, 0 labels; zero outside)."""
        if tuple(array.shape) != self.original_shape:
            raise ValueError(f"array shape {array.shape} != original shape {self.original_shape}")
        if self.is_pure_crop:
            return _crop_or_pad(array, self.crop_start, self.shape, mode="constant")
        from scipy import ndimage

        source = array
        if order > 0:
            sigma = [max(0.0, (f - 2.0) / 2.0) for f in self.factor]   # f <= 2: linear sampling is a box filter
            if any(s > 0 for s in sigma):
                source = ndimage.gaussian_filter(array.astype(np.float32), sigma)
        axes = [self.network_to_original_coords(a, np.arange(n, dtype=np.float64)) for a, n in enumerate(self.shape)]
        if order == 0:
            axes = [np.floor(ax + 0.5) for ax in axes]   # deterministic round-half-up for labels
        coords = np.meshgrid(*axes, indexing="ij")
        out = ndimage.map_coordinates(source, coords, order=order, mode="constant", cval=0.0, prefilter=False)
        return out.astype(array.dtype, copy=False)

    # -- network -> original -------------------------------------------------------------------------
    def field_to_original(self, field: np.ndarray) -> np.ndarray:
        """Map a ``(3, *shape)`` network-grid field to a ``(*original_shape, 3)`` original-grid field."""
        if field.shape != (3, *self.shape):
            raise ValueError(f"field shape {field.shape} != (3, {self.shape})")
        if self.is_pure_crop:
            comps = [_crop_or_pad(field[a], [-c for c in self.crop_start], self.original_shape, mode="edge")
                     for a in range(3)]
        else:
            # trilinear = three 1-D linear passes (same numbers as map_coordinates(order=1, mode="nearest"), ~10x
            # less CPU at LUMIR size since no 3-D coordinate arrays are built)
            out = field.astype(np.float32, copy=False)
            for a in range(3):
                q = np.clip(self.original_to_network_coords(a, np.arange(self.original_shape[a], dtype=np.float64)),
                            0, self.shape[a] - 1)
                lo = np.floor(q).astype(np.intp)
                w = (q - lo).astype(np.float32).reshape([-1 if d == a + 1 else 1 for d in range(4)])
                out = np.take(out, lo, axis=a + 1) * (1 - w) + np.take(out, np.minimum(lo + 1, self.shape[a] - 1),
                                                                         axis=a + 1) * w
            comps = [out[a] * np.float32(self.factor[a]) for a in range(3)]
        return np.stack(comps, axis=-1).astype(np.float32, copy=False)


def _crop_or_pad(array: np.ndarray, start: Any, shape: Any, mode: str) -> np.ndarray:
    """``array[start : start + shape]`` per axis; indices outside are zero (``constant``) or edge values.

    acvl-utils' ``crop_and_pad_nd`` (nnU-Net's helper; half-open boxes, ``np.pad`` for numpy arrays) does the work.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    box = [[int(s), int(s) + int(n)] for s, n in zip(start, shape)]
    return np.ascontiguousarray(crop_and_pad_nd(array, box, pad_value=0, pad_mode="edge" if mode == "edge"
                                                else "constant"))
