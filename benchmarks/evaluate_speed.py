"""Time nnreg's evaluator on one 1 mm pair against a straightforward per-label baseline in the same run.

The baseline follows the official ``L2R_LUMIR_Eval`` algorithm step by step (written here, since the
official code cannot be downloaded on the build machines): nibabel float64 reads, one
``map_coordinates`` per warped volume, full-volume ``== label`` masks per label, per-label surface
distances with ``correlate`` neighbour codes, two Euclidean distance transforms of the bounding box and a
Python ``sorted`` of (distance, area) pairs, per-landmark full-volume centroids, and ten
``correlate``-built Jacobians over the whole grid for NDV. It also serves as an independent second
implementation: the table shows the largest difference between the two per metric.

    python benchmarks/evaluate_speed.py --data ../shared/data/OpenBrains160 --field smooth --json out.json
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from nnreg.dataset.image_io import write_displacement
from nnreg.evaluation.config import load_config
from nnreg.evaluation.runner import evaluate_folder
from nnreg.evaluation.surfels import surfel_area_table

logger = logging.getLogger("benchmarks.evaluate_speed")

# ---------------------------------------------------------------------------------------------- baseline


def _warp(volume: np.ndarray, disp: np.ndarray) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    return ndimage.map_coordinates(volume, grid + disp.transpose(3, 0, 1, 2), order=0)


def _baseline_hd95_label(gt: np.ndarray, pred: np.ndarray, table: np.ndarray) -> float:
    union = gt | pred
    idx = [np.nonzero(np.amax(union, axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx])
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    result = []
    crops = []
    for mask in (gt, pred):
        crop = np.zeros(hi - lo + 2, np.uint8)
        crop[:-1, :-1, :-1] = mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
        code = ndimage.correlate(crop, kernel, mode="constant", cval=0)
        crops.append(((code != 0) & (code != 255), table[code]))
    (border_gt, area_gt), (border_pred, area_pred) = crops
    if not border_pred.any():
        return float("inf")
    dist_gt = ndimage.distance_transform_edt(~border_gt, sampling=np.ones(3))
    dist_pred = ndimage.distance_transform_edt(~border_pred, sampling=np.ones(3))
    for d, a in ((dist_pred[border_gt], area_gt[border_gt]), (dist_gt[border_pred], area_pred[border_pred])):
        pairs = np.array(sorted(zip(d, a)))
        cumulative = np.cumsum(pairs[:, 1]) / np.sum(pairs[:, 1])
        i = np.searchsorted(cumulative, 0.95)
        result.append(pairs[min(i, len(pairs) - 1), 0])
    return float(max(result))


def _baseline_tre(warped: np.ndarray, fixed: np.ndarray) -> float:
    xv, yv, zv = np.meshgrid(*(np.arange(n, dtype=float) for n in fixed.shape), indexing="ij")
    errors = []
    for value in np.unique(fixed)[1:]:
        centres = []
        for vol in (warped, fixed):
            m = (vol == value).astype(np.float32)
            centres.append(np.array([np.sum(m * c) / np.sum(m) for c in (xv, yv, zv)]))
        errors.append(np.sqrt(np.sum((centres[0] - centres[1]) ** 2)))
    return float(np.mean(errors))


def _baseline_ndv(disp: np.ndarray, mask: np.ndarray) -> float:
    t = disp.transpose(3, 0, 1, 2) + np.stack(np.meshgrid(*(np.arange(n) for n in disp.shape[:3]),
                                                            indexing="ij")).astype(np.float32)

    def det(grads: list[np.ndarray]) -> np.ndarray:
        j = [[g[c] for c in range(3)] for g in grads]
        d = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
             + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1]))
        return d[1:-1, 1:-1, 1:-1]

    def grad(kernel: np.ndarray) -> np.ndarray:
        return np.stack([ndimage.correlate(t[c], kernel, mode="nearest") for c in range(3)])

    total = 0.0
    for signs in ("+++", "++-", "+-+", "+--", "-++", "-+-", "--+", "---"):
        grads = []
        for axis, s in enumerate(signs):
            k = np.array([0, -1, 1]) if s == "+" else np.array([-1, 1, 0])
            grads.append(grad(k.reshape([3 if a == axis else 1 for a in range(3)])))
        total += np.sum(-0.5 * np.minimum(det(grads), 0) * mask / 6)
    for offsets in ((( -1, -1, 0), (-1, 0, -1), (0, -1, -1)), ((1, 1, 0), (0, 1, 1), (1, 0, 1))):
        grads = []
        for off in offsets:
            k = np.zeros((3, 3, 3))
            k[1, 1, 1] = -1
            k[tuple(1 + o for o in off)] = 1
            grads.append(grad(k))
        total += np.sum(-0.5 * np.minimum(det(grads), 0) * mask / 6)
    return float(total / np.sum(mask) * 100)


def baseline_pair(disp_path: Path, root: Path, fixed: str, moving: str, labels: list[float]) -> dict[str, float]:
    """All four LUMIR metrics of one pair, the plain way."""
    load = lambda rel, kind="images": nib.load(str(root / rel[2:].replace("images", kind))).get_fdata()  # noqa: E731
    disp = nib.load(str(disp_path)).get_fdata()
    fixed_seg, moving_seg = load(fixed, "labels"), load(moving, "labels")
    warped = _warp(moving_seg, disp)
    table = surfel_area_table()
    dices, hds = [], []
    for label in labels:
        if (fixed_seg == label).sum() == 0 or (moving_seg == label).sum() == 0:
            dices.append(np.nan)
            hds.append(np.nan)
            continue
        f, w = fixed_seg == label, warped == label
        dices.append(2 * (f & w).sum() / (f.sum() + w.sum()))
        hds.append(_baseline_hd95_label(f, w, table))
    fixed_lms, moving_lms = load(fixed, "landmarks"), load(moving, "landmarks")
    mask = load(moving)[1:-1, 1:-1, 1:-1] > 0
    return {"DSC": float(np.nanmean(dices)), "HD95": float(np.nanmean(hds)),
            "TRE_lm": _baseline_tre(_warp(moving_lms, disp), fixed_lms),
            "Non-diffeomorphic Volumes": _baseline_ndv(disp, mask)}


# ---------------------------------------------------------------------------------------------- driver


def make_field(shape: tuple[int, ...], kind: str, amplitude: float = 5.0, seed: int = 0) -> np.ndarray:
    """A zero field, or a smooth random one (cubic upsampling of coarse noise, a few voxels of amplitude)."""
    if kind == "zero":
        return np.zeros(tuple(shape) + (3,), np.float32)
    rng = np.random.default_rng(seed)
    coarse = rng.normal(scale=amplitude, size=(3,) + tuple(max(2, s // 16) for s in shape))
    comps = [ndimage.zoom(c, [s / n for s, n in zip(shape, c.shape)], order=3) for c in coarse]
    return np.stack(comps, -1).astype(np.float32)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "OpenBrains160")
    parser.add_argument("--config", default="OBR160_VAL_All_evaluation_config.json")
    parser.add_argument("--field", choices=["zero", "smooth"], default="smooth")
    parser.add_argument("--amplitude", type=float, default=5.0, help="Std of the coarse noise (voxels).")
    parser.add_argument("--json", type=Path, default=None, help="Write the measurements here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(args.data / args.config)
    config.pairs = config.pairs[:1]
    pair = config.pairs[0]
    labels = next(m.labels for m in config.methods if m.metric == "dice")
    shape = nib.load(str(args.data / pair.fixed[2:])).shape
    with tempfile.TemporaryDirectory() as tmp:
        fix_id, mov_id = pair.fixed[-16:-12], pair.moving[-16:-12]
        disp_path = Path(tmp) / f"disp_{fix_id}_{mov_id}.nii.gz"
        write_displacement(make_field(shape, args.field, args.amplitude), disp_path)
        ours, ours_wall, ours_cpu = timed(lambda: evaluate_folder(tmp, args.data, [config]))
        base, base_wall, base_cpu = timed(lambda: baseline_pair(disp_path, args.data, pair.fixed, pair.moving,
                                                                list(labels)))
    case = ours.cases[pair.key]
    rows = [(name, case[name]["mean"], base[name]) for name in base]
    print(f"pair {pair.key}, grid {shape}, field {args.field}, {len(labels)} labels")
    print(f"{'metric':28s} {'nnreg':>12s} {'baseline':>12s} {'|diff|':>10s}")
    for name, a, b in rows:
        print(f"{name:28s} {a:12.6f} {b:12.6f} {abs(a - b):10.2e}")
    print(f"{'time (wall / CPU), s':28s} {ours_wall:6.1f}/{ours_cpu:5.1f} {base_wall:6.1f}/{base_cpu:5.1f}"
          f"  speed-up {base_wall / ours_wall:.1f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "pair": pair.key, "shape": list(shape), "field": args.field, "labels": len(labels),
            "nnreg": {"wall_s": ours_wall, "cpu_s": ours_cpu, "metrics": {n: a for n, a, _ in rows}},
            "baseline": {"wall_s": base_wall, "cpu_s": base_cpu, "metrics": {n: b for n, _, b in rows}},
        }, indent=2, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
