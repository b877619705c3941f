"""Accuracy benchmark: the documented CPU recipe against classical registration, same pairs, same run, same metrics.

    python benchmarks/accuracy.py --dataset ../shared/data/OpenBrains80 --train-minutes 30 --output acc --json acc.json

On a Learn2Reg dataset with labels it runs, as subprocesses of the documented commands:

1. ``nnreg_plan_and_preprocess -d ID --device cpu`` and ``nnreg_train ID all -c CONFIGURATION --device cpu
   --time-budget M`` (training on the dataset's training images only; ``--configuration``, default ``3d_fullres``;
   falls back to ``--epochs`` when this nnreg has no ``--time-budget``);
2. ``nnreg_predict`` on the dataset's ``validation`` pairs without refinement (``--instance-optimization 0``,
   method ``nnreg``) and with it (the plans' default, ``--instance-optimization N`` and
   ``--instance-optimization-settings KEY=VALUE,...`` passed on; method ``nnreg_refined``);
3. SimpleITK fast symmetric forces demons, 3 levels (shrink 4/2/1), on the same pairs (method ``demons``);
4. ANTs SyN through ``antspyx`` when it is importable (method ``ants_syn``; the table says so when it is not);
5. the zero field (method ``zero``), and ``nnreg_evaluate -c CONFIG`` (the dataset's official ``*_All_*`` config
   unless ``--config``) for every method.

Fields go to ``OUTDIR/<method>/disp_<fix>_<mov>.nii.gz`` (voxel-unit pull fields on the fixed grid, the challenge
format), metrics to ``OUTDIR/<method>/metrics.json``; the model, plans and logs to ``OUTDIR/work/``. The table is
printed and the rows (``method, dice, hd95, tre, ndv, seconds_per_pair, train_minutes``) are written to ``--json``.
``seconds_per_pair`` is the wall time of the method from image files to written fields divided by the number of
pairs (for nnreg the whole ``nnreg_predict`` process, start-up and model loading included).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("nnreg.benchmarks.accuracy")

BENCH_ID = 990                      # id given to a dataset folder not named DatasetXXX_Name
DEMONS_SHRINK = (4, 2, 1)           # pyramid levels
DEMONS_ITERATIONS = (100, 50, 25)   # per level
DEMONS_SIGMA = 1.0                  # Gaussian smoothing of the update field (voxels of each level)
METRICS = {"dice": "DSC", "hd95": "HD95", "tre": "TRE_lm", "ndv": "Non-diffeomorphic Volumes"}


# -- dataset -------------------------------------------------------------------------------------------------
def link_dataset(dataset: Path, raw: Path) -> tuple[int, Path]:
    """``raw/DatasetXXX_Name`` -> ``dataset`` (a symlink; raw data are never copied or modified); (id, link)."""
    match = re.match(r"^Dataset(\d{3})_", dataset.name)
    name = dataset.name if match else f"Dataset{BENCH_ID}_{dataset.name}"
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / name
    if link.is_symlink() or link.exists():
        if link.resolve() != dataset.resolve():
            raise SystemExit(f"{link} exists and points elsewhere; use another --output")
    else:
        link.symlink_to(dataset.resolve(), target_is_directory=True)
    return (int(match.group(1)) if match else BENCH_ID), link


def validation_pairs(dataset: Path) -> list[tuple[Path, Path]]:
    """(fixed, moving) image paths of ``dataset.json``'s ``validation`` list."""
    from nnreg.inference.pairs import collect_pairs

    return [(p.fixed, p.moving) for p in collect_pairs(str(dataset), "validation", None, None)]


def default_config(dataset: Path) -> Path | None:
    """The dataset's official evaluation config with every metric (``*_All_evaluation_config.json``)."""
    hits = sorted(dataset.glob("*_All_evaluation_config.json"))
    return hits[0] if hits else None


# -- subprocesses ----------------------------------------------------------------------------------------------
def run(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a command with its output appended to ``log``; its wall seconds. A failure stops the benchmark."""
    logger.info("$ %s", " ".join(command))
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{command[0]} failed (exit {code}); see {log}")
    return seconds


def train_arguments(minutes: float, env: dict[str, str]) -> list[str]:
    """``--time-budget M`` when ``nnreg_train`` has it, else epochs of 20 iterations sized from M (~1 epoch/min)."""
    helptext = subprocess.run(["nnreg_train", "--help"], capture_output=True, text=True, env=env).stdout
    if "--time-budget" in helptext:
        return ["--time-budget", f"{minutes:g}"]
    return ["--epochs", str(max(1, round(minutes))), "--iterations-per-epoch", "20"]


# -- classical methods -------------------------------------------------------------------------------------------
def itk_to_voxel_field(displacement_mm: np.ndarray, geometry: Any) -> np.ndarray:
    """ITK physical displacement (x, y, z mm, on the fixed grid, (i, j, k, 3)) -> voxel-unit pull field.

    ITK maps fixed point ``p`` to ``p + d(p)`` in the moving image (a pull field); with ``A = Direction ·
    diag(spacing)`` the voxel displacement is ``u = A^-1 d`` (the inverse of nnreg's ``--itk`` export).
    """
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    matrix = direction @ np.diag(np.asarray(geometry.spacing, dtype=np.float64))
    return np.einsum("ab,ijkb->ijka", np.linalg.inv(matrix), displacement_mm).astype(np.float32)


def demons_field(fixed_path: Path, moving_path: Path) -> np.ndarray:
    """SimpleITK fast symmetric forces demons, levels shrink 4/2/1, as a voxel-unit pull field (i, j, k, 3)."""
    import SimpleITK as sitk

    from nnreg.dataset.image_io import read_image
    from nnreg.inference.resample import align_moving, to_sitk

    fixed_array, geometry = read_image(fixed_path)
    moving_array, moving_geometry = read_image(moving_path)
    moving_array = align_moving(moving_array, moving_geometry, geometry, str(moving_path))
    fixed = to_sitk(fixed_array.astype(np.float32), geometry)
    moving = to_sitk(moving_array.astype(np.float32), geometry)
    field = None
    for shrink, iterations in zip(DEMONS_SHRINK, DEMONS_ITERATIONS):
        if shrink > 1:
            fixed_level = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 0.5 * shrink * min(geometry.spacing)),
                                      [shrink] * 3)
            moving_level = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, 0.5 * shrink * min(geometry.spacing)),
                                       [shrink] * 3)
        else:
            fixed_level, moving_level = fixed, moving
        if field is None:
            initial = sitk.Image(fixed_level.GetSize(), sitk.sitkVectorFloat64, 3)
            initial.CopyInformation(fixed_level)
        else:
            initial = sitk.Resample(field, fixed_level, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    sitk.sitkVectorFloat64)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(DEMONS_SIGMA)
        field = demons.Execute(fixed_level, moving_level, initial)
    displacement = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3)       # (i, j, k, 3) in mm (x, y, z)
    return itk_to_voxel_field(displacement, geometry)


def ants_available() -> bool:
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def ants_field(fixed_path: Path, moving_path: Path) -> np.ndarray:
    """ANTs SyN (antspyx) as a voxel-unit pull field: the moving grid's voxel coordinates warped onto the fixed grid
    by the estimated transforms (exact for linear interpolation of a linear function), minus the identity."""
    import ants

    fixed = ants.image_read(str(fixed_path))
    moving = ants.image_read(str(moving_path))
    result = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN")
    shape = moving.shape
    field = []
    for axis in range(3):
        coordinate = np.broadcast_to(np.arange(shape[axis], dtype=np.float32).reshape(
            [-1 if a == axis else 1 for a in range(3)]), shape).copy()
        image = ants.from_numpy(coordinate, origin=moving.origin, spacing=moving.spacing, direction=moving.direction)
        warped = ants.apply_transforms(fixed, image, result["fwdtransforms"], interpolator="linear")
        field.append(warped.numpy() - np.arange(fixed.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]))
    return np.stack(field, axis=-1).astype(np.float32)


def write_fields(method: str, pairs: list[tuple[Path, Path]], out: Path) -> float:
    """Register every pair with a classical ``method`` and write its fields; seconds per pair (files -> field)."""
    from nnreg.dataset.image_io import read_image, write_displacement
    from nnreg.inference.export import pair_outputs

    out.mkdir(parents=True, exist_ok=True)
    register = {"demons": demons_field, "ants_syn": ants_field}[method]
    start = time.perf_counter()
    for k, (fixed, moving) in enumerate(pairs):
        field = register(fixed, moving)
        write_displacement(field, pair_outputs(out, fixed, moving).displacement, read_image(fixed)[1])
        logger.info("%s: pair %d/%d done", method, k + 1, len(pairs))
    return (time.perf_counter() - start) / max(1, len(pairs))


def write_zero_fields(pairs: list[tuple[Path, Path]], out: Path) -> None:
    from nnreg.dataset.image_io import read_image, write_displacement
    from nnreg.inference.export import pair_outputs

    out.mkdir(parents=True, exist_ok=True)
    for fixed, moving in pairs:
        geometry = read_image(fixed)[1]
        write_displacement(np.zeros((*geometry.shape, 3), np.float32), pair_outputs(out, fixed, moving).displacement,
                           geometry)


# -- evaluation and report -------------------------------------------------------------------------------------------
def read_metrics(path: Path) -> dict[str, float]:
    """The mean of each benchmark metric from an ``nnreg_evaluate -o`` file (NaN where the config lacks it)."""
    aggregates = json.loads(path.read_text())["aggregates"]
    return {key: float(aggregates[name]["mean"]) if name in aggregates else math.nan for key, name in METRICS.items()}


def format_table(rows: list[dict[str, Any]], notes: list[str]) -> str:
    """The result as a markdown table (the layout of documentation/benchmarks.md)."""
    def cell(value: Any, digits: int) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.{digits}f}"

    lines = ["| method | Dice | HD95 | TRE (vox) | NDV % | s / pair | train min |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {cell(r['dice'], 4)} | {cell(r['hd95'], 2)} | {cell(r['tre'], 2)} | "
                     f"{cell(r['ndv'], 4)} | {cell(r['seconds_per_pair'], 1)} | {cell(r['train_minutes'], 1)} |")
    return "\n".join(lines + [f"\n{n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="Learn2Reg dataset folder with labels")
    parser.add_argument("--train-minutes", type=float, required=True, help="nnreg_train --time-budget (minutes)")
    parser.add_argument("--output", type=Path, required=True, help="folder for OUTDIR/<method>/ fields and work/")
    parser.add_argument("--json", type=Path, required=True, help="write the result rows here")
    parser.add_argument("--config", type=Path, default=None,
                        help="evaluation config (default: the dataset's *_All_evaluation_config.json)")
    parser.add_argument("--instance-optimization", type=int, default=None,
                        help="refinement steps of the nnreg_refined row (default: the plans' setting)")
    parser.add_argument("--instance-optimization-settings", default=None, metavar="KEY=VALUE,...",
                        help="nnreg_predict --instance-optimization-settings of the nnreg_refined row")
    parser.add_argument("--configuration", default="3d_fullres",
                        help="nnreg configuration to train and predict with (e.g. 3d_halfres for 1 mm data on a CPU)")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the model already trained in OUTDIR/work (its measured train minutes are reported "
                             "when that run recorded them, else --train-minutes)")
    parser.add_argument("--methods", default="nnreg,nnreg_refined,demons,ants_syn,zero",
                        help="comma-separated subset of nnreg, nnreg_refined, demons, ants_syn, zero")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from nnreg.utilities.files import read_json, write_json

    dataset = args.dataset.expanduser().resolve()
    out = args.output.expanduser().resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    config = args.config or default_config(dataset)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dataset_id, _ = link_dataset(dataset, work / "raw")
    pairs = validation_pairs(dataset)
    env = dict(os.environ, nnReg_raw=str(work / "raw"), nnReg_preprocessed=str(work / "preprocessed"),
               nnReg_results=str(work / "results"))
    notes: list[str] = []
    rows: list[dict[str, Any]] = []

    if {"nnreg", "nnreg_refined"} & set(methods):
        if not args.skip_training:
            run(["nnreg_plan_and_preprocess", "-d", str(dataset_id), "--device", "cpu"], log, env)
            train_start = time.perf_counter()
            run(["nnreg_train", str(dataset_id), "all", "-c", args.configuration, "--device", "cpu",
                 *train_arguments(args.train_minutes, env)], log, env)
            train_minutes = (time.perf_counter() - train_start) / 60
            write_json({"train_minutes": train_minutes}, work / "train_minutes.json")
        else:   # the measured minutes of the run that trained the model (the given budget if not recorded)
            recorded = work / "train_minutes.json"
            train_minutes = read_json(recorded)["train_minutes"] if recorded.is_file() else args.train_minutes
        for method in ("nnreg", "nnreg_refined"):
            if method not in methods:
                continue
            refinement = ["--instance-optimization", "0"] if method == "nnreg" else (
                [] if args.instance_optimization is None else ["--instance-optimization", str(args.instance_optimization)])
            if method == "nnreg_refined" and args.instance_optimization_settings:
                refinement += ["--instance-optimization-settings", args.instance_optimization_settings]
            seconds = run(["nnreg_predict", "-i", str(dataset), "-o", str(out / method), "-d", str(dataset_id),
                           "-c", args.configuration, "--device", "cpu", *refinement], log, env)
            rows.append({"method": method, "seconds_per_pair": seconds / max(1, len(pairs)),
                         "train_minutes": train_minutes})
    for method in ("demons", "ants_syn"):
        if method not in methods:
            continue
        if method == "ants_syn" and not ants_available():
            notes.append("ANTs SyN: not run, antspyx is not installed (pip install antspyx).")
            continue
        rows.append({"method": method, "seconds_per_pair": write_fields(method, pairs, out / method),
                     "train_minutes": None})
    if "zero" in methods:
        write_zero_fields(pairs, out / "zero")
        rows.append({"method": "zero", "seconds_per_pair": None, "train_minutes": None})

    for row in rows:
        metrics = out / row["method"] / "metrics.json"
        command = ["nnreg_evaluate", "-i", str(out / row["method"]), "-d", str(dataset), "-o", str(metrics)]
        run(command + (["-c", str(config)] if config else []), log, env)
        row.update(read_metrics(metrics))
    ordered = [{k: r.get(k) for k in ("method", "dice", "hd95", "tre", "ndv", "seconds_per_pair", "train_minutes")}
               for r in rows]
    notes.append(f"{len(pairs)} validation pairs of {dataset.name}; config {config.name if config else 'default'}; "
                 f"nnreg configuration {args.configuration}.")
    if args.instance_optimization_settings:
        notes.append(f"nnreg_refined: --instance-optimization-settings {args.instance_optimization_settings}")
    print(format_table(ordered, notes))
    write_json({"dataset": str(dataset), "pairs": len(pairs), "notes": notes, "rows": ordered}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
