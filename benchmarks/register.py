"""Pairwise registration benchmark: ``nnreg_register`` (no trained model) against ANTs SyNQuick, Greedy (affine then
deformable), SimpleITK demons after an affine, and the zero field, on pairs moved far apart by a documented generator.

    pip install antspyx picsl-greedy      # optional anchors: a missing package is a table row, never a crash
    python benchmarks/register.py --dataset ../shared/data/OpenBrains80 --split train --pairs 4 --seed 0 \\
        --threads 1 --output reg80 --json reg80.json            # tuning (training subjects)
    python benchmarks/register.py --dataset ../shared/data/OpenBrains80 --split val ...   # reporting (held out)

Pairs (``--split``): ``train`` pairs consecutive training subjects of ``dataset.json`` (``training[i]`` fixed,
``training[i+1]`` moving; imagesTr/labelsTr); ``val`` takes the ``validation`` pairs (imagesVal/labelsVal and
landmarksVal, so TRE too), ``--pairs N`` of them spread evenly over the list. Each moving image, its label map and
its landmarks are moved by one random affine (±10°, ±10 % scale, ±10 mm shift per axis) and a smooth warp (5 mm) —
``benchmarks/register_pairs.py`` documents the generator, reproducible from ``--seed`` and the pair's index. The
``scanner`` set is the same pairs with the moving image in another scanner's intensities (units ×4, bias field,
gamma, noise; same ground truth), and the ``aligned`` set the same pairs as the dataset has them (no perturbation,
the dataset's own labels and landmarks): the reference the perturbed sets are compared with. The generated files go
to ``OUTDIR/pairs/`` with a ``pairs.json`` record.

Methods, all in the same run, each giving a Learn2Reg field (voxels, pull, fixed grid) scored by
``nnreg.evaluation.evaluate_pair`` (``nnreg_evaluate``'s functions; the dataset's evaluation-config labels; NDV
masked by the moving image, LUMIR 2024) with seconds per pair from the image files to written outputs (wall, and
CPU seconds of this process and its children, the fairer clock on a shared machine):

* ``nnreg``: the ``nnreg_register --fixed F --moving M -o DIR [--threads N]`` command as a subprocess (its seconds
  are the whole process, Python start-up included; ``register.log``'s own total is in the JSON);
* ``nnreg_model`` (with ``--model MODEL_FOLDER``): the same command with ``-m MODEL_FOLDER``: a trained model's
  network starts the deformable stage;
* ``ants``: antspyx ``antsRegistrationSyNQuick[s]`` (rigid + affine + SyN), transforms composed into one field;
* ``greedy``: picsl-greedy, ``-a -dof 12 -ia-image-centers`` then deformable ``-it`` (``-m NCC 2x2x2``, 100x50x10
  both), composed with ``-rc``;
* ``demons``: SimpleITK affine (centred initialiser, Mattes MI, shrink 4/2/1), histogram matching (SimpleITK's demons
  examples do it: demons compares intensities), then benchmarks/anchors.py's demons;
* ``zero``: the zero field;
* with ``--deformable-settings "steps=60,integration_steps=3" ...`` (tuning), one more row per setting string:
  nnreg's pipeline in this process (``benchmarks/register_variants.py``: ``register_images`` with the deformable
  and finer-grid stages' settings overridden, ``finer_``-prefixed keys for the latter; the field
  written as ``nnreg_register`` writes it; seconds without the process start-up).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: benchmarks/ is importable

from benchmarks.landmark_proxy import write_proxy_landmarks  # noqa: E402
from benchmarks.register_compare import comparisons, format_comparisons  # noqa: E402
from benchmarks.register_methods import LABELS, PACKAGES, RUNNERS, available, run_nnreg  # noqa: E402
from benchmarks.register_pairs import Perturbation, max_rotation_degrees, perturb  # noqa: E402
from benchmarks.register_scoring import config_labels, rescore, score, summarise  # noqa: E402
from benchmarks.register_variants import nnreg_variant  # noqa: E402

logger = logging.getLogger("nnreg.benchmarks.register")

SETS = ("geometry", "scanner", "aligned")
METHODS = ("nnreg", "nnreg_model", "ants", "greedy", "demons", "zero")   # nnreg_model: with --model only


# -- pairs ---------------------------------------------------------------------------------------------------------
def dataset_pairs(dataset: Path, split: str, count: int) -> list[tuple[str, str]]:
    """(fixed, moving) relative image paths of ``split`` (module doc)."""
    spec = json.loads((dataset / "dataset.json").read_text())
    if split == "train":
        images = [entry["image"] for entry in spec["training"]]
        pairs = [(images[i], images[i + 1]) for i in range(len(images) - 1)]
    else:
        pairs = [(entry["fixed"], entry["moving"]) for entry in spec["validation"]]
    if count >= len(pairs):
        return pairs
    return [pairs[i * len(pairs) // count] for i in range(count)]


def _optional(path: Path) -> np.ndarray | None:
    from nnreg.dataset.image_io import read_image

    return read_image(path, dtype=np.int32)[0] if path.is_file() else None


def generate(dataset: Path, split: str, count: int, seed: int, perturbation: Perturbation, out: Path
             ) -> list[dict[str, Any]]:
    """Write the perturbed moving images (both sets), labels and landmarks; the pairs' records."""
    from nnreg.dataset.image_io import read_image, write_image
    from nnreg.evaluation.ground_truth import ground_truth_file, image_file

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (fixed_rel, moving_rel) in enumerate(dataset_pairs(dataset, split, count)):
        moving, geometry = read_image(image_file(dataset, moving_rel))
        labels = _optional(ground_truth_file(dataset, moving_rel, "labels"))
        landmarks = _optional(ground_truth_file(dataset, moving_rel, "landmarks"))
        stem = f"pair{index:02d}"
        proxy = None if landmarks is not None or labels is None else write_proxy_landmarks(
            ground_truth_file(dataset, fixed_rel, "labels"), labels, geometry, out / stem)
        proxies: dict[str, Path] = {}
        if proxy is not None:
            proxies, landmarks = proxy
        moved = perturb(moving, geometry, labels, landmarks, perturbation, seed, index)
        files = {"geometry": out / f"{stem}_moving.nii.gz", "scanner": out / f"{stem}_moving_scanner.nii.gz"}
        write_image(moved.image, geometry, files["geometry"])
        write_image(moved.scanner_image, geometry, files["scanner"])
        files["aligned"] = image_file(dataset.resolve(), moving_rel)       # the pair as the dataset has it
        aligned_truth = {f"moving_{kind}": str(ground_truth_file(dataset.resolve(), moving_rel, kind))
                         for kind in ("labels", "landmarks")}
        if proxies:
            aligned_truth["moving_landmarks"] = str(proxies["moving"])
        record: dict[str, Any] = {"fixed": str(image_file(dataset.resolve(), fixed_rel)), "moving_source": moving_rel,
                                  "moving": {k: str(v) for k, v in files.items()},
                                  "truth": {"aligned": aligned_truth},
                                  "fixed_labels": str(ground_truth_file(dataset.resolve(), fixed_rel, "labels")),
                                  "fixed_landmarks": str(ground_truth_file(dataset.resolve(), fixed_rel,
                                                                           "landmarks")),
                                  "landmarks": "label centroids (benchmarks/landmark_proxy.py)" if proxies
                                  else "the dataset's",
                                  "transform": moved.record,
                                  "rotation_total_deg": round(max_rotation_degrees(moved.record), 2)}
        if proxies:
            record["fixed_landmarks"] = str(proxies["fixed"])
        for kind, array in (("labels", moved.labels), ("landmarks", moved.landmarks)):
            record[f"moving_{kind}"] = None
            if array is not None:
                path = out / f"{stem}_moving_{kind}.nii.gz"
                write_image(array.astype(np.int16), geometry, path)
                record[f"moving_{kind}"] = str(path)
        records.append(record)
    (out / "pairs.json").write_text(json.dumps(records, indent=1))
    return records


# -- scoring -------------------------------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (nnreg_register runs as a child): on a shared machine
    a fairer clock than wall seconds."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_method(method: str, records: list[dict[str, Any]], image_set: str, out: Path, threads: int | None,
               labels: list[float] | None) -> dict[str, Any]:
    """One table row: every pair registered and scored; 'not installed' / 'failed' rows instead of a crash."""
    from nnreg.dataset.image_io import write_displacement

    label = LABELS.get(method, f"nnreg in-process {method}")
    row: dict[str, Any] = {"set": image_set, "method": method, "label": label, "status": "ok", "pairs": []}
    if not available(method):
        row["status"] = f"not installed (pip install {PACKAGES[method][1]})"
        return row
    for index, record in enumerate(records):
        fixed, moving = Path(record["fixed"]), Path(record["moving"][image_set])
        folder = out / image_set / method.replace("=", "-").replace(",", "_") / f"pair{index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        began, cpu = time.perf_counter(), _cpu_seconds()
        try:
            runner = RUNNERS[method] if method in RUNNERS else nnreg_variant(method)
            field, extra = runner(fixed, moving, folder, threads)
            if method not in ("nnreg", "nnreg_model"):
                write_displacement(field, folder / "field.nii.gz")
        except Exception as exc:  # an anchor's own failure is its row's status, the others still run
            logger.warning("%s on pair %d failed: %s", method, index, exc)
            row["status"] = f"failed: {str(exc).strip().splitlines()[-1][:80] if str(exc).strip() else type(exc)}"
            return row
        seconds, cpu = time.perf_counter() - began, _cpu_seconds() - cpu
        metrics = score(field, record, moving, labels, image_set)
        row["pairs"].append({"pair": index, "seconds": seconds, "cpu_seconds": cpu, **metrics, **extra})
        logger.info("%s %s pair %d: %s (%.1f s)", image_set, method, index,
                    ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), seconds)
    return summarise(row)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The printed table."""
    def cell(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"{'set':9s} {'method':48s} {'Dice':>6s} {'HD95':>6s} {'TRE':>6s} {'Dice*':>6s} {'TRE*':>6s} "
             f"{'NDV %':>7s} {'s/pair':>7s} {'CPU s':>6s}  status",
             "-" * 126]
    for row in rows:
        lines.append(f"{row['set']:9s} {row['label']:48s} {cell(row.get('dice'), 3):>6s} "
                     f"{cell(row.get('hd95'), 2):>6s} {cell(row.get('tre'), 2):>6s} "
                     f"{cell(row.get('dice_exact'), 3):>6s} {cell(row.get('tre_exact'), 2):>6s} "
                     f"{cell(row.get('ndv'), 5):>7s} "
                     f"{cell(row.get('seconds'), 1):>7s} {cell(row.get('cpu_seconds'), 1):>6s}  {row['status']}")
    lines.append("Dice*, TRE*: the field carried through the generator's transform, scored against the original "
                 "labels and landmarks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="Learn2Reg dataset folder with dataset.json")
    parser.add_argument("--split", choices=("train", "val"), default="train",
                        help="train: training subjects (tuning); val: the validation pairs (reporting, once)")
    parser.add_argument("--pairs", type=int, default=4, help="number of pairs (spread over the split's list)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (one stream per pair index)")
    parser.add_argument("--rotation", type=float, default=10.0, help="± degrees per axis")
    parser.add_argument("--scale", type=float, default=0.10, help="± relative scale per axis")
    parser.add_argument("--shift", type=float, default=10.0, help="± mm per axis")
    parser.add_argument("--warp", type=float, default=5.0, help="largest displacement of the smooth warp (mm)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {METHODS} (default: all; nnreg_model only with --model)")
    parser.add_argument("--model", default=None,
                        help="a trained model folder: the nnreg_model row runs nnreg_register -m MODEL")
    parser.add_argument("--deformable-settings", nargs="*", default=[],
                        help='tuning rows: nnreg in this process with these deformable settings ("steps=60,...")')
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {SETS}")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every method (torch, ITK, Greedy); default: each tool's own")
    parser.add_argument("--output", type=Path, required=True, help="working folder (pairs, fields, logs)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and settings here")
    parser.add_argument("--rescore", type=Path, default=None,
                        help="score an earlier run again from the fields under --output (its JSON here; nothing "
                             "is registered; seconds are kept)")
    parser.add_argument("--report", type=Path, default=None,
                        help="print the table and the paired comparisons of an earlier run's JSON (nothing is "
                             "registered or scored)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.report is not None:
        earlier = json.loads(args.report.read_text())
        print(format_rows(earlier["rows"]))
        print(format_comparisons(comparisons(earlier["rows"])))
        return 0
    if args.rescore is not None:
        result = rescore(json.loads(args.rescore.read_text()), args.output, config_labels(args.dataset))
        result["table"] = format_rows(result["rows"])
        print(result["table"])
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    default = [m for m in METHODS if m != "nnreg_model" or args.model]
    methods = [m for m in (args.methods.split(",") if args.methods is not None else default) if m]
    if "nnreg_model" in methods and not args.model:
        raise SystemExit("the nnreg_model row needs --model MODEL_FOLDER")
    if args.model:
        RUNNERS["nnreg_model"] = functools.partial(run_nnreg, model=args.model)
    sets = [s for s in args.sets.split(",") if s]
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(sets) - set(SETS))
    if unknown:
        raise SystemExit(f"unknown method(s)/set(s): {', '.join(unknown)}")
    if args.threads:
        for name in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
            os.environ[name] = str(args.threads)
        import SimpleITK as sitk
        import torch

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
        torch.set_num_threads(args.threads)
    perturbation = Perturbation(args.rotation, args.scale, args.shift, args.warp)
    records = generate(args.dataset, args.split, args.pairs, args.seed, perturbation, args.output / "pairs")
    labels = config_labels(args.dataset)
    methods += [text for text in args.deformable_settings if text]
    rows = [run_method(m, records, s, args.output, args.threads, labels) for s in sets for m in methods]
    table = format_rows(rows)
    print(f"{len(records)} {args.split} pairs of {args.dataset.name}, seed {args.seed}, {perturbation}, "
          f"threads {args.threads or 'default'}, load {os.getloadavg()[0]:.1f}")
    print(table)
    paired = comparisons(rows)
    if paired:
        print(format_comparisons(paired))
    if args.json is not None:
        args.json.write_text(json.dumps({"dataset": str(args.dataset), "split": args.split, "seed": args.seed,
                                         "perturbation": vars(perturbation), "threads": args.threads,
                                         "load": os.getloadavg()[0], "pairs": records, "rows": rows,
                                         "table": table, "comparisons": paired}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
