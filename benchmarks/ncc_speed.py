"""Local NCC: nnreg's bounded version against the previous cumulative-sum version and a ``conv3d`` box filter.

For each shape, forward + backward time of ``-mean(cc)`` (window 9) of the three window-sum methods, measured in
the same run on the same random images; on a real pair (``--fixed/--moving``, intensities divided by
``--scale``) the value range of ``cc``, how many voxels leave [0, 1], and the spread of the gradient with respect to
the warped image (max, median, 99.99th percentile). The two baselines are written here (the formula of the old
``nnreg.losses.ncc`` and VoxelMorph's ``conv3d`` with a ones kernel); both use the unclamped formula.

    python benchmarks/ncc_speed.py --shapes 80x112x96 160x224x192 \\
        --fixed ../shared/data/OpenBrains80/imagesVal/OBR_0008_0000.nii.gz \\
        --moving ../shared/data/OpenBrains80/imagesVal/OBR_0009_0000.nii.gz --json ncc.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nnreg.losses.ncc import EPS, local_ncc

logger = logging.getLogger("benchmarks.ncc_speed")


def _cumsum_box(x: torch.Tensor, window: int) -> torch.Tensor:
    """The previous window sums: per axis zero-pad, cumulative sum, difference ``window`` apart."""
    pad = window // 2
    out = x
    for axis in range(3):
        dim = 2 + axis
        n = out.shape[dim]
        spec = [0] * 6
        spec[(2 - axis) * 2] = pad + 1
        spec[(2 - axis) * 2 + 1] = pad
        cumulative = torch.cumsum(F.pad(out, spec), dim)
        out = cumulative.narrow(dim, window, n) - cumulative.narrow(dim, 0, n)
    return out


def _conv_box(x: torch.Tensor, window: int) -> torch.Tensor:
    """VoxelMorph's window sums: one ``conv3d`` with a ``window^3`` ones kernel."""
    return F.conv3d(x, x.new_ones((1, 1, window, window, window)), padding=window // 2)


def _unclamped_cc(box: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def cc(i: torch.Tensor, j: torch.Tensor, window: int = 9) -> torch.Tensor:
        b = i.shape[0]
        s_i, s_j, s_ii, s_jj, s_ij = box(torch.cat([i, j, i * i, j * j, i * j]), window).split(b)
        n = float(window ** 3)
        cross = s_ij - s_i * s_j / n
        return cross * cross / ((s_ii - s_i * s_i / n) * (s_jj - s_j * s_j / n) + EPS)
    return cc


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "nnreg (unfold sums, clamped)": local_ncc,
    "previous (cumsum sums)": _unclamped_cc(_cumsum_box),
    "conv3d box filter (VoxelMorph)": _unclamped_cc(_conv_box),
}


def time_method(method: Callable[..., torch.Tensor], shape: tuple[int, ...], repeats: int) -> float:
    """Median seconds of forward + backward of ``-mean(cc)`` on random images of ``shape``."""
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand((1, 1, *shape), generator=gen)
    warped = torch.rand((1, 1, *shape), generator=gen).requires_grad_(True)
    times = []
    for k in range(repeats + 1):
        warped.grad = None
        start = time.perf_counter()
        (-method(fixed, warped, 9).mean()).backward()
        if k:                                   # the first run warms up allocator and kernels
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def real_pair_stats(method: Callable[..., torch.Tensor], fixed: np.ndarray, moving: np.ndarray) -> dict[str, float]:
    """Value range, out-of-bound voxels and gradient spread of ``cc`` on a real pair."""
    f = torch.from_numpy(fixed)[None, None]
    m = torch.from_numpy(moving)[None, None].requires_grad_(True)
    cc = method(f, m, 9)
    (-cc.mean()).backward()
    values = cc.detach()
    grad = m.grad.abs().flatten()
    return {"cc_min": float(values.min()), "cc_max": float(values.max()),
            "voxels_outside_0_1": int(((values < 0) | (values > 1)).sum()),
            "grad_max": float(grad.max()), "grad_median": float(grad.median()),
            "grad_p9999": float(torch.quantile(grad[:: max(1, grad.numel() // 2_000_000)], 0.9999))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["80x112x96", "160x224x192"], help="HxWxD shapes to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per method and shape")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fixed", type=Path, default=None, help="real fixed image (NIfTI) for the value checks")
    parser.add_argument("--moving", type=Path, default=None, help="real moving image (NIfTI)")
    parser.add_argument("--scale", type=float, default=255.0, help="divide the real images by this")
    parser.add_argument("--skip-conv-above", type=int, default=3_000_000,
                        help="skip the conv3d baseline above this many voxels (its backward takes minutes)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict[str, object]] = {name: {} for name in METHODS}
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split("x"))
        for name, method in METHODS.items():
            if "conv3d" in name and int(np.prod(shape)) > args.skip_conv_above:
                continue
            results[name][f"seconds_{text}"] = time_method(method, shape, args.repeats)
    if args.fixed and args.moving:
        import nibabel as nib

        fixed = (np.asarray(nib.load(str(args.fixed)).dataobj, dtype=np.float32) / args.scale)
        moving = (np.asarray(nib.load(str(args.moving)).dataobj, dtype=np.float32) / args.scale)
        for name, method in METHODS.items():
            results[name].update(real_pair_stats(method, fixed, moving))
    columns = sorted({k for row in results.values() for k in row}, key=lambda k: (not k.startswith("seconds"), k))
    header = f"{'method':32s} " + " ".join(f"{c:>18s}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{'—':>18s}" if v is None else f"{v:>18.4g}" if isinstance(v, float) else f"{v:>18}")
        lines.append(f"{name:32s} " + " ".join(cells))
    logger.info("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
