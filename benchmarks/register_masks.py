"""Masks on real brains: a resection-like cavity in the moving image, registered by ``nnreg_register`` without and
with ``--moving-mask``, against the same pair without the cavity.

    python benchmarks/register_masks.py --dataset ../shared/data/OpenBrains80 --pairs 4 --radius 15 --threads 2 \\
        --output masks80 --json masks80.json

For each of the first ``--pairs`` validation pairs (``dataset.json``; the images as the dataset has them), a sphere
of ``--radius`` mm around a seeded voxel of the moving image's cerebral cortex (aseg labels 3 and 42) is set to 0
inside the brain: tissue that is gone. The mask is the image minus that cavity grown by one voxel. Three rows:
``intact`` (the original moving image: the reference), ``cavity`` (no mask) and ``cavity + mask``. Each is scored
with the official metrics against the original labels (``nnreg.evaluation.evaluate_pair``: Dice, HD95, NDV; the
labels inside the cavity count for every row alike) and by its **deviation around the cavity**: the mean distance
(mm) between the row's field and the intact row's over the fixed voxels that the intact registration maps into the
shell from ``radius`` to ``radius + 10`` mm around the cavity's centre (tissue both images have; inside the cavity
no registration has anything to go by). Why: a cavity's edges pull the surrounding anatomy into it; a mask that
restricts the similarity should keep the registration where the intact image puts it. Seconds are the whole
``nnreg_register`` process. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: benchmarks/ is importable

from benchmarks.register_methods import run_nnreg  # noqa: E402
from benchmarks.register_scoring import config_labels  # noqa: E402

logger = logging.getLogger("nnreg.benchmarks.register_masks")

CORTEX = (3, 42)           # aseg left / right cerebral cortex
ROWS = ("intact", "cavity", "cavity + mask")


def cavity(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], radius: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the image with a spherical cavity of ``radius`` mm at a random cortex voxel, the cavity (bool), its centre
    in voxels); only brain voxels (image > 0) are emptied."""
    candidates = np.argwhere(np.isin(labels, CORTEX))
    if len(candidates) == 0:
        raise ValueError("no cortex label (3 or 42) in the moving labels")
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), -1)
    distance = np.sqrt((((grid - centre) * np.asarray(spacing)) ** 2).sum(-1))
    hole = (distance <= radius) & (image > 0)
    out = image.copy()
    out[hole] = 0
    return out, hole, centre


def deviation(field: np.ndarray, reference: np.ndarray, centre: np.ndarray, spacing: tuple[float, ...],
              inner: float, outer: float) -> float:
    """Mean distance (mm) between two voxel fields over the fixed voxels that ``reference`` maps more than ``inner``
    and at most ``outer`` mm from ``centre`` (moving voxels)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in field.shape[:3]], indexing="ij"), -1)
    mapped = grid + reference
    distance = np.sqrt((((mapped - centre) * np.asarray(spacing)) ** 2).sum(-1))
    near = (distance > inner) & (distance <= outer)
    if not near.any():
        return float("nan")
    difference = (field - reference)[near] * np.asarray(spacing)
    return float(np.sqrt((difference ** 2).sum(-1)).mean())


def register(fixed: Path, moving: Path, out: Path, threads: int | None, mask: Path | None) -> tuple[np.ndarray, float]:
    """``nnreg_register`` as a user runs it (:func:`benchmarks.register_methods.run_nnreg`); (its field, seconds)."""
    began = time.perf_counter()
    field, _ = run_nnreg(fixed, moving, out, threads, moving_mask=mask)
    return field, time.perf_counter() - began


def run(dataset: Path, pairs: int, radius: float, seed: int, threads: int | None, output: Path) -> list[dict]:
    """Every pair's three rows (module docstring)."""
    from scipy import ndimage

    from nnreg.dataset.image_io import read_image, write_image
    from nnreg.evaluation import evaluate_pair
    from nnreg.evaluation.ground_truth import ground_truth_file, image_file

    spec = json.loads((dataset / "dataset.json").read_text())
    labels_config = config_labels(dataset)
    results = []
    for index, entry in enumerate(spec["validation"][:pairs]):
        fixed = image_file(dataset, entry["fixed"])
        moving, geometry = read_image(image_file(dataset, entry["moving"]))
        fixed_labels = read_image(ground_truth_file(dataset, entry["fixed"], "labels"), np.int32)[0]
        moving_labels = read_image(ground_truth_file(dataset, entry["moving"], "labels"), np.int32)[0]
        emptied, hole, centre = cavity(moving, moving_labels, geometry.spacing, radius,
                                       np.random.default_rng([seed, index]))
        folder = output / f"pair{index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_image(emptied, geometry, folder / "moving_cavity.nii.gz")
        write_image((~ndimage.binary_dilation(hole)).astype(np.uint8), geometry, folder / "moving_mask.nii.gz")
        inputs = {"intact": (image_file(dataset, entry["moving"]), None),
                  "cavity": (folder / "moving_cavity.nii.gz", None),
                  "cavity + mask": (folder / "moving_cavity.nii.gz", folder / "moving_mask.nii.gz")}
        fields = {}
        for name in ROWS:
            moving_path, mask = inputs[name]
            field, seconds = register(fixed, moving_path, folder / name.replace(" + ", "_"), threads, mask)
            fields[name] = field
            metrics = evaluate_pair(field.astype(np.float64), fixed_labels, moving_labels, labels=labels_config,
                                    moving_image=moving)
            metrics["deviation_mm"] = deviation(field, fields["intact"], centre, geometry.spacing, radius,
                                                radius + 10.0)
            results.append({"pair": index, "row": name, "seconds": seconds, "cavity_voxels": int(hole.sum()),
                            **metrics})
            logger.info("pair %d %s: %s", index, name, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return results


def table(results: list[dict[str, Any]]) -> str:
    """Mean of each row over the pairs."""
    lines = [f"{'row':14s} {'Dice':>6s} {'HD95':>6s} {'NDV %':>8s} {'deviation mm':>13s} {'s/pair':>7s}", "-" * 60]
    for name in ROWS:
        rows = [r for r in results if r["row"] == name]
        mean = {k: float(np.nanmean([r[k] for r in rows])) for k in ("dice", "hd95", "ndv", "deviation_mm", "seconds")}
        lines.append(f"{name:14s} {mean['dice']:6.4f} {mean['hd95']:6.3f} {mean['ndv']:8.5f} "
                     f"{mean['deviation_mm']:13.3f} {mean['seconds']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="Learn2Reg dataset folder with labels")
    parser.add_argument("--pairs", type=int, default=4, help="the first N validation pairs")
    parser.add_argument("--radius", type=float, default=15.0, help="cavity radius (mm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cavities' centres")
    parser.add_argument("--threads", type=int, default=None, help="nnreg_register --threads")
    parser.add_argument("--output", type=Path, required=True, help="working folder")
    parser.add_argument("--json", type=Path, default=None, help="write the per-pair rows and the table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.dataset.resolve(), args.pairs, args.radius, args.seed, args.threads, args.output.resolve())
    text = table(results)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps({"dataset": str(args.dataset), "radius": args.radius, "seed": args.seed,
                                         "rows": results, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
