"""Jacobian-based regularity metrics: NDV (non-diffeomorphic volume), SDlogJ and non-positive Jacobians.

Conventions: displacement fields are ``(H, W, D, 3)`` in voxel units along the array axes, pull convention
``warped(x) = moving(x + u(x))``, arrays in nibabel ``(i, j, k)`` order. All arithmetic is float64, as in
the official evaluator (nibabel's ``get_fdata``).

NDV (Liu et al., IJCV 2024, as in ``L2R_LUMIR_Eval``): T = identity + u. Ten 3x3 Jacobians per voxel,
one per tetrahedron of two cube subdivisions: eight one-sided ones J(±x, ±y, ±z) built from forward
(``T(i+1) - T(i)``) or backward (``T(i) - T(i-1)``) differences, and two central-tetrahedron ones J*1
(edges to (i-1,j-1,k), (i-1,j,k-1), (i,j-1,k-1)) and J*2 (edges to (i+1,j+1,k), (i,j+1,k+1), (i+1,j,k+1)).
Everything lives on the grid cropped by one voxel per side. NDV_abs = sum over the ten and over voxels
of ``0.5 * max(-J, 0) * mask / 6``; NDV % = NDV_abs / sum(mask) * 100.

SDlogJ follows the Learn2Reg code: central differences (``[-0.5, 0, 0.5]``) of u, plus identity, cropped
by two voxels per side; the official code then adds 3 to the determinant and clips it to [1e-9, 1e9]
before the log (an inherited quirk, kept by default so numbers match; ``l2r_offset=False`` gives the
textbook std of log(clip(J))). Its ``num_foldings`` counts determinants <= 0 *after* that clip, which is
always 0; :func:`non_positive_jacobians` counts the real ones.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

# Offsets of the three edge vectors of each tetrahedron, in the official summation order.
_ONE_SIDED = ["+x+y+z", "+x+y-z", "+x-y+z", "+x-y-z"]
_ONE_SIDED_NEG = ["-x+y+z", "-x+y-z", "-x-y+z", "-x-y-z"]
_STAR_EDGES = {
    "Jstar_1": ((-1, -1, 0), (-1, 0, -1), (0, -1, -1)),
    "Jstar_2": ((1, 1, 0), (0, 1, 1), (1, 0, 1)),
}
NDV_SCHEMES = _ONE_SIDED + ["Jstar_1", "Jstar_2"] + _ONE_SIDED_NEG


def _transformation(disp: np.ndarray) -> np.ndarray:
    """T = u + identity as float64 ``(3, H, W, D)`` (identity built as float32 like the official grid)."""
    disp = np.asarray(disp)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"a displacement field must be (H, W, D, 3), got {disp.shape}")
    identity = np.stack(np.meshgrid(*(np.arange(n) for n in disp.shape[:3]), indexing="ij")).astype(np.float32)
    return np.moveaxis(disp, -1, 0).astype(np.float64) + identity


def _shifted(t: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:
    """T at ``x + offset`` on the interior grid (one voxel cropped per side)."""
    h, w, d = t.shape[1:]
    a, b, c = offset
    return t[:, 1 + a:h - 1 + a, 1 + b:w - 1 + b, 1 + c:d - 1 + c]


def _det3(j: list[np.ndarray]) -> np.ndarray:
    """Determinant with ``j[a][c]`` = derivative along axis a of component c (the official expansion)."""
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
            + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1]))


def _scheme_determinant(t: np.ndarray, scheme: str) -> np.ndarray:
    centre = _shifted(t, (0, 0, 0))
    rows = []
    if scheme in _STAR_EDGES:
        for offset in _STAR_EDGES[scheme]:
            rows.append(_shifted(t, offset) - centre)
    else:
        for axis, sign in enumerate(scheme[0::2]):
            step = [0, 0, 0]
            step[axis] = 1 if sign == "+" else -1
            neighbour = _shifted(t, tuple(step))
            rows.append(neighbour - centre if sign == "+" else centre - neighbour)
    return _det3(rows)


def _cross(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.stack([y[1] * z[2] - y[2] * z[1], y[2] * z[0] - y[0] * z[2], y[0] * z[1] - y[1] * z[0]])


def _slab_determinants(t: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The ten determinants of a slab (one-plane halo), sharing differences and cross products.

    Row expansion ``J = x . (y x z)`` of the one-sided schemes equals the official cofactor expansion up
    to floating-point rounding (~1e-16 relative); the differences themselves are the same numbers.
    """
    centre = _shifted(t, (0, 0, 0))
    forward, backward = [], []
    for axis in range(3):
        step = [0, 0, 0]
        step[axis] = 1
        forward.append(_shifted(t, tuple(step)) - centre)
        step[axis] = -1
        backward.append(centre - _shifted(t, tuple(step)))
    for sy, sz in (("+", "+"), ("+", "-"), ("-", "+"), ("-", "-")):
        yz = _cross(forward[1] if sy == "+" else backward[1], forward[2] if sz == "+" else backward[2])
        for sx, x in (("+", forward[0]), ("-", backward[0])):
            yield f"{sx}x{sy}y{sz}z", x[0] * yz[0] + x[1] * yz[1] + x[2] * yz[2]
    for scheme in _STAR_EDGES:
        yield scheme, _scheme_determinant(t, scheme)


SLAB = 16  # interior planes per chunk: the ten determinants of a slab stay in cache-friendly sizes


def ndv_absolute(disp: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Non-diffeomorphic volume in voxels; ``mask`` has the cropped shape ``(H-2, W-2, D-2)`` (default all ones).

    Computed in slabs along axis 0 (each with a one-plane halo): the determinants are the same numbers as
    on the whole grid, only the summation is split.
    """
    t = _transformation(disp)
    inner = t.shape[1] - 2
    per_scheme = dict.fromkeys(NDV_SCHEMES, 0.0)
    for start in range(0, inner, SLAB):
        stop = min(start + SLAB, inner)
        weight = mask[start:stop] if mask is not None else None
        for scheme, jac in _slab_determinants(t[:, start:stop + 2]):
            negative = np.minimum(jac, 0)
            per_scheme[scheme] += float(np.sum(negative[weight] if weight is not None else negative))
    return float(sum(-0.5 * per_scheme[s] / 6 for s in NDV_SCHEMES))


def ndv(disp: np.ndarray, mask: np.ndarray | None = None) -> float:
    """NDV in percent of the mask volume. ``mask`` may be full-size ``(H, W, D)`` (cropped here) or cropped.

    The official mask is ``image[1:-1, 1:-1, 1:-1] > 0`` of the moving image (LUMIR 2024) or the fixed
    image (LUMIR 2025); pass the image's ``> 0`` mask. ``None`` means all voxels. An empty mask gives NaN.
    """
    shape = tuple(np.asarray(disp).shape[:3])
    cropped = tuple(n - 2 for n in shape)
    if mask is None:
        m = np.ones(cropped, dtype=bool)
    else:
        m = np.asarray(mask)
        if m.shape == shape:
            m = m[1:-1, 1:-1, 1:-1]
        if m.shape != cropped:
            raise ValueError(f"NDV mask shape {m.shape} matches neither {shape} nor {cropped}")
        m = m > 0
    volume = ndv_absolute(disp, m)
    count = int(np.sum(m))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(volume) / count * 100) if count else float("nan")


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """Central-difference Jacobian determinant of x + u(x), cropped by two voxels per side (L2R code)."""
    disp = np.asarray(disp, dtype=np.float64)
    h, w, d = disp.shape[:3]
    inner = (slice(2, h - 2), slice(2, w - 2), slice(2, d - 2))
    rows = []
    for axis in range(3):
        lo = list(inner)
        hi = list(inner)
        lo[axis] = slice(inner[axis].start - 1, inner[axis].stop - 1)
        hi[axis] = slice(inner[axis].start + 1, inner[axis].stop + 1)
        row = []
        for comp in range(3):
            grad = 0.5 * disp[tuple(hi) + (comp,)] - 0.5 * disp[tuple(lo) + (comp,)]
            row.append(grad + 1.0 if comp == axis else grad)
        rows.append(row)
    return _det3(rows)


def _log_jacobian(disp: np.ndarray, l2r_offset: bool) -> np.ndarray:
    jac = jacobian_determinant(disp)
    if l2r_offset:
        jac = jac + 3
    return np.log(jac.clip(0.000000001, 1000000000))


def sdlogj(disp: np.ndarray, mask: np.ndarray | None = None, *, l2r_offset: bool = True) -> float:
    """Standard deviation of log Jacobian determinant, as the Learn2Reg evaluator computes it.

    ``mask`` (full size ``(H, W, D)``) restricts it to voxels where ``mask == 1`` (``masked_evaluation``).
    """
    log_jac = _log_jacobian(disp, l2r_offset)
    if mask is None:
        return float(log_jac.std())
    m = np.asarray(mask, dtype=np.float64)[2:-2, 2:-2, 2:-2]
    return float(np.ma.MaskedArray(log_jac, 1 - m).std())


def num_foldings_l2r(disp: np.ndarray) -> float:
    """The official ``num_foldings``: determinants <= 0 after ``+3`` and clipping, hence always 0."""
    jac = (jacobian_determinant(disp) + 3).clip(0.000000001, 1000000000)
    return float((jac <= 0).astype(float).sum())


def non_positive_jacobians(disp: np.ndarray, mask: np.ndarray | None = None) -> int:
    """Number of voxels whose central-difference Jacobian determinant is <= 0 (grid cropped by two voxels)."""
    jac = jacobian_determinant(disp)
    bad = jac <= 0
    if mask is not None:
        bad &= np.asarray(mask)[2:-2, 2:-2, 2:-2] > 0
    return int(bad.sum())
