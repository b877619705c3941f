"""Tune the test-time refinement on training subjects: one trained model, several settings, the same pairs.

    python benchmarks/refinement_tuning.py -m MODEL_FOLDER -f all --dataset RAW_DATASET_DIR --max-pairs 8 \
        --json tuning.json --settings "" "grid_factor=2" "grid_factor=2,lambda_reg=0.5"

Each ``--settings`` entry is a comma-separated list of ``key=value`` overrides of the model's recorded
``instance_optimization`` (:class:`nnreg.inference.instance_optimization.InstanceOptimization`; the syntax of
``nnreg_predict --instance-optimization-settings``; ``""`` = the recorded setting as it is); the row ``network`` is
the network's field without refinement. Items ``finer.KEY=VALUE`` override the finer-grid stage
(:class:`nnreg.inference.finer_grid.FinerGridSettings`, the syntax of ``nnreg_predict --finer-grid-settings``), which
runs after the refinement, as in ``nnreg_predict``, when the network grid is coarser than the images (``3d_halfres``
of 1 mm data); ``finer.steps=0`` ends on the network grid. The pairs are ordered pairs of **training** images with
labels (``labelsTr``), never the held-out ``validation`` pairs: with a numeric ``-f`` the images of that fold's
validation split in ``splits_final.json`` (which that fold's network never saw), with ``-f all`` all training images
(seen by the network, so the starting field is better than on new subjects). Pair ``k`` is
``(image[k mod n], image[(k + 1 + k // n) mod n])``, so every subject is fixed and moving once before any repeats.
The network field of a pair is computed once and every setting refines that same field.

Scores are the official metrics of :mod:`nnreg.evaluation` (Dice and HD95 over the labels of ``--eval-config`` or
every label of the fixed map, NDV in % of the moving image's foreground, ``ndv_mask="moving"``) and the refinement's
wall seconds per pair, finer-grid stage included (network excluded). ``cross miss ppm`` estimates the risk of the
official TRE being NaN on landmark pairs, which training pairs do not have: the official TRE warps each moving
landmark blob (a 7-voxel cross in LUMIR-style data) with nearest neighbours and is NaN when a blob vanishes; the
column counts, per million moving-foreground voxels, those whose 7-voxel cross no fixed voxel's nearest-neighbour pick
of ``x + u(x)`` (the evaluator's) lands in (such a cross would vanish). ``TRE*`` is the official TRE (voxels) on the
training pairs' proxy landmarks: the held-out landmarks' own recipe, 7-voxel blobs at 21 aseg structures' centroids,
applied to each label map (:mod:`landmark_proxy`); the mean over pairs skips a pair whose TRE is NaN (a vanished
blob) and ``TRE NaN`` counts them. Prints a table and writes the rows to ``--json``.

Then each later setting against the first one of ``--settings`` (the reference, usually ``""``): the per-pair
difference of Dice, HD95 and TRE* (pairs where both TREs are defined), its mean, a percentile bootstrap 95 % interval
over the pairs (``benchmarks/accuracy_report.py``'s ``paired_difference``, seed 0) and the pairs where the setting is better (higher Dice,
lower HD95 and TRE*), printed and in ``--json`` as ``differences``. With 8 pairs the intervals are wide: a held-out
check of an HD95 change of 0.03 voxels went the other way (documentation/benchmarks.md, eighteenth session).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: benchmarks/ is importable

from benchmarks.accuracy_report import paired_difference  # noqa: E402
from benchmarks.landmark_proxy import centroid_landmarks  # noqa: E402

from nnreg.dataset.learn2reg import ImageEntry, load_dataset
from nnreg.evaluation import evaluate_pair, load_config
from nnreg.evaluation.ground_truth import load_volume
from nnreg.evaluation.warp import OUTSIDE, nearest_indices
from nnreg.inference import nnRegPredictor
from nnreg.inference.finer_grid import FinerGridSettings, parse_finer_overrides
from nnreg.inference.refinement_settings import InstanceOptimization, parse_overrides
from nnreg.utilities.files import read_json, write_json

logger = logging.getLogger("nnreg.benchmarks.refinement_tuning")


def training_images(dataset: Path, fold: str, preprocessed_splits: Path | None) -> list[ImageEntry]:
    """The training images to pair: a fold's validation split (numeric ``fold``) or all of them."""
    images = list(load_dataset(dataset).training)
    if fold == "all":
        return images
    if preprocessed_splits is None or not preprocessed_splits.is_file():
        raise SystemExit("a numeric -f needs --splits (the dataset's splits_final.json)")
    keep = set(read_json(preprocessed_splits)[int(fold)]["val"])
    chosen = [e for e in images if e.case_id in keep]
    if len(chosen) < 2:
        raise SystemExit(f"fold {fold}'s validation split has fewer than two images")
    return chosen


def make_pairs(images: list[ImageEntry], max_pairs: int) -> list[tuple[ImageEntry, ImageEntry]]:
    n = len(images)
    pairs = []
    for k in range(min(max_pairs, n * (n - 1))):
        fixed, moving = k % n, (k % n + 1 + k // n) % n
        pairs.append((images[fixed], images[moving]))
    return pairs


def cross_miss_ppm(disp: np.ndarray, moving_image: np.ndarray) -> float:
    """Moving-foreground voxels (per million) whose 6-neighbour cross gets no nearest-neighbour hit from ``disp``
    (``(H, W, D, 3)`` voxel pull field on the fixed grid; the moving image on its own grid), each fixed voxel's hit
    picked as the official evaluator picks it (:func:`nnreg.evaluation.warp.nearest_indices`)."""
    indices = nearest_indices(disp, moving_image.shape)       # the official evaluator's nearest-neighbour pick
    hits = np.zeros(moving_image.size, dtype=bool)
    hits[indices[indices != OUTSIDE]] = True
    hits = hits.reshape(moving_image.shape)
    cross = ndimage.generate_binary_structure(3, 1)
    reached = ndimage.binary_dilation(hits, structure=cross)
    foreground = moving_image > 0
    return float(np.count_nonzero(foreground & ~reached) / max(np.count_nonzero(foreground), 1) * 1e6)


def parse_setting(text: str, recorded: InstanceOptimization) -> tuple[InstanceOptimization, FinerGridSettings]:
    """One ``--settings`` entry: refinement overrides, and ``finer.``-prefixed finer-grid overrides."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    finer = ",".join(item[len("finer."):] for item in items if item.startswith("finer."))
    refinement = ",".join(item for item in items if not item.startswith("finer."))
    return (recorded.with_overrides(parse_overrides(refinement)),
            FinerGridSettings().with_overrides(parse_finer_overrides(finer)))


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'setting':<44} {'Dice':>7} {'HD95':>6} {'TRE*':>6} {'TRE NaN':>7} {'NDV %':>8} {'cross miss ppm':>14} "
            f"{'refine s':>9} {'steps':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['setting']:<44} {r['dice']:>7.4f} {r['hd95']:>6.2f} {r['tre_proxy']:>6.3f} "
                     f"{r['tre_proxy_nan']:>7d} {r['ndv']:>8.4f} "
                     f"{r['cross_miss_ppm']:>14.2f} "
                     f"{r['refine_seconds_per_pair']:>9.2f} {r['mean_steps']:>6.1f}")
    return "\n".join(lines)


#: per-pair metric of a row, and whether a higher value is better
PAIRED_METRICS: dict[str, tuple[str, bool]] = {"dice": ("per_pair_dice", True),
                                               "hd95": ("per_pair_hd95", False),
                                               "tre_proxy": ("per_pair_tre_proxy", False)}


def paired_differences(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Each refined setting other than ``reference`` minus ``reference``, per metric: over the pairs where both values
    are finite, the mean difference, its bootstrap 95 % interval and the pairs where the setting is better."""
    base = next(r for r in rows if r["setting"] == reference)
    out = []
    for row in rows:
        if row["setting"] in (reference, "network"):
            continue
        entry: dict[str, Any] = {"setting": row["setting"], "reference": reference}
        for metric, (key, higher_better) in PAIRED_METRICS.items():
            finite = [i for i, (a, b) in enumerate(zip(row[key], base[key])) if np.isfinite(a) and np.isfinite(b)]
            paired = paired_difference({i: row[key][i] for i in finite}, {i: base[key][i] for i in finite})
            diffs = paired["per_pair"].values()
            better = paired["reference_ahead"] if higher_better else sum(d < 0 for d in diffs)
            entry[metric] = {"pairs": paired["pairs"], "mean": paired["mean"], "ci95": paired["ci95"],
                             "better": int(better)}
        out.append(entry)
    return out


def format_differences(entries: list[dict[str, Any]]) -> str:
    """One line per setting: mean difference [95 % interval] (pairs better / pairs) of Dice, HD95 and TRE*."""
    if not entries:
        return ""
    lines = [f"against {entries[0]['reference']!r} (setting minus reference; pairs better / pairs):"]
    for e in entries:
        parts = [f"{label} {e[m]['mean']:+.4f} [{e[m]['ci95'][0]:+.4f}, {e[m]['ci95'][1]:+.4f}] "
                 f"({e[m]['better']}/{e[m]['pairs']})" for m, label in (("dice", "Dice"), ("hd95", "HD95"),
                                                                       ("tre_proxy", "TRE*"))]
        lines.append(f"{e['setting']:<44} " + "  ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model-folder", type=Path, required=True, help="trained model folder")
    parser.add_argument("-f", "--fold", default="all", help="fold of the model (numeric: pairs from its val split)")
    parser.add_argument("--dataset", type=Path, required=True, help="raw Learn2Reg dataset folder with labelsTr")
    parser.add_argument("--splits", type=Path, default=None, help="splits_final.json (for a numeric -f)")
    parser.add_argument("--max-pairs", type=int, default=8, help="number of ordered training pairs")
    parser.add_argument("--settings", nargs="+", default=[""], help="key=value,... overrides (\"\" = recorded)")
    parser.add_argument("--eval-config", type=Path, default=None, help="take the Dice/HD95 labels from this config")
    parser.add_argument("--json", type=Path, required=True, help="write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    predictor = nnRegPredictor(device="cpu", instance_optimization=0)
    predictor.initialize_from_trained_model_folder(args.model_folder, use_folds=[args.fold])
    recorded = InstanceOptimization.from_json(getattr(predictor.configuration, "instance_optimization", None))
    settings = [(text or "recorded", *parse_setting(text, recorded)) for text in args.settings]
    labels = None
    if args.eval_config is not None:
        dice_methods = [m for m in load_config(args.eval_config).methods if m.metric == "dice"]
        labels = dice_methods[0].labels if dice_methods else None
    pairs = make_pairs(training_images(args.dataset, args.fold, args.splits), args.max_pairs)
    logger.info("%d training pairs, %d settings, model %s fold %s", len(pairs), len(settings),
                args.model_folder, args.fold)

    candidates: list[tuple[str, InstanceOptimization | None, FinerGridSettings]] = [
        ("network", None, FinerGridSettings(steps=0)), *settings]
    scores: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in candidates}
    for fixed_entry, moving_entry in pairs:
        fixed_path, moving_path = fixed_entry.path, moving_entry.path
        prepared = predictor.prepare(fixed_path, moving_path)
        network_field = predictor.predict_network_grid(prepared.fixed_network, prepared.moving_network)
        fixed_labels = load_volume(fixed_entry.labels_path(), "fixed labels", fixed_path)
        moving_labels = load_volume(moving_entry.labels_path(), "moving labels", moving_path)
        moving_image = load_volume(moving_path, "moving image")
        fixed_landmarks, moving_landmarks = centroid_landmarks(fixed_labels), centroid_landmarks(moving_labels)
        for name, setting, finer in candidates:
            start = time.perf_counter()
            steps, finer_field = 0, None
            field = network_field
            if setting is not None and setting.enabled:
                field = predictor.refine(prepared.fixed_network, prepared.moving_network, network_field, setting)
                steps = predictor.last_refinement.steps_run
                predictor.finer_grid = finer
                finer_field = predictor.refine_on_original_grid(prepared, setting)
                if predictor.last_finer_grid is not None:
                    steps += predictor.last_finer_grid.steps_run
            disp = finer_field if finer_field is not None else prepared.mapping.field_to_original(field[0].numpy())
            seconds = time.perf_counter() - start
            metrics = evaluate_pair(disp, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks,
                                    moving_image=moving_image, labels=labels, metrics=("dice", "hd95", "tre", "ndv"))
            metrics.update(seconds=seconds, steps=steps, cross_miss=cross_miss_ppm(disp, moving_image))
            scores[name].append(metrics)
            logger.info("%s <- %s  %-40s Dice %.4f TRE* %.3f NDV %.4f cross miss %.1f ppm  %.1f s", fixed_path.name,
                        moving_path.name, name, metrics["dice"], metrics["tre"], metrics["ndv"], metrics["cross_miss"],
                        seconds)

    rows = []
    for name, setting, finer in candidates:
        values = scores[name]
        rows.append({"setting": name, "settings": None if setting is None else setting.to_json(),
                     "finer_grid": finer.to_json(), "pairs": len(values),
                     "dice": float(np.mean([v["dice"] for v in values])),
                     "hd95": float(np.mean([v["hd95"] for v in values])),
                     "tre_proxy": float(np.nanmean([v["tre"] for v in values])),
                     "tre_proxy_nan": int(np.count_nonzero(np.isnan([v["tre"] for v in values]))),
                     "per_pair_dice": [v["dice"] for v in values], "per_pair_tre_proxy": [v["tre"] for v in values],
                     "per_pair_hd95": [v["hd95"] for v in values],
                     "ndv": float(np.mean([v["ndv"] for v in values])),
                     "cross_miss_ppm": float(np.mean([v["cross_miss"] for v in values])),
                     "refine_seconds_per_pair": float(np.mean([v["seconds"] for v in values])),
                     "mean_steps": float(np.mean([v["steps"] for v in values]))})
    differences = paired_differences(rows, settings[0][0])
    print(format_table(rows))
    if differences:
        print(format_differences(differences))
    write_json({"model_folder": str(args.model_folder), "fold": args.fold,
                "pairs": [[str(f.path), str(m.path)] for f, m in pairs], "rows": rows,
                "differences": differences}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
