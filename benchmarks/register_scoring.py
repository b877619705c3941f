"""Scoring of ``benchmarks/register.py``'s fields: the official metrics against each set's ground truth, and the
**exact** scores of the perturbed sets (the field carried through the generator's own transform and scored against
the original labels and landmarks, :func:`benchmarks.register_pairs.through_perturbation`), so that the perturbed
sets can be compared with the aligned set without the generator's nearest-neighbour loss of the moved labels."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def config_labels(dataset: Path) -> list[float] | None:
    """The Dice labels of the dataset's ``*_All_evaluation_config.json`` (None: every label of the fixed map)."""
    from nnreg.evaluation import load_config

    for path in sorted(dataset.glob("*_All_evaluation_config.json")):
        for method in load_config(path).methods:
            if method.metric == "dice" and method.labels:
                return list(method.labels)
    return None


def score(field: np.ndarray, record: dict[str, Any], moving_image: Path, labels: list[float] | None,
          image_set: str = "aligned") -> dict[str, float]:
    """Dice, HD95 (with labels), TRE (with landmarks) and NDV of one field (``nnreg.evaluation.evaluate_pair``)
    against the set's ground truth, and for a perturbed set ``dice_exact`` / ``tre_exact``: the field carried
    through the generator's own transform and scored against the original labels and landmarks
    (:func:`exact_scores`); for the aligned set they are its Dice and TRE."""
    from nnreg.evaluation import evaluate_pair
    from nnreg.evaluation.ground_truth import load_volume

    truth = {**record, **record.get("truth", {}).get(image_set, {})}

    def volume(key: str) -> np.ndarray | None:
        path = truth.get(key)
        return load_volume(Path(path), key) if path and Path(path).is_file() else None

    metrics = evaluate_pair(np.asarray(field, dtype=np.float64), volume("fixed_labels"), volume("moving_labels"),
                            volume("fixed_landmarks"), volume("moving_landmarks"),
                            moving_image=load_volume(moving_image, "moving image"), labels=labels)
    if image_set == "aligned" or "aligned" not in record.get("truth", {}):
        metrics.update({f"{k}_exact": metrics[k] for k in ("dice", "tre") if k in metrics})
        return metrics
    return {**metrics, **exact_scores(field, record, labels)}


def exact_scores(field: np.ndarray, record: dict[str, Any], labels: list[float] | None) -> dict[str, float]:
    """``dice_exact`` and ``tre_exact`` of a perturbed pair's field: carried into the original moving image's voxels
    through the generator's transform (:func:`benchmarks.register_pairs.through_perturbation`) and scored against
    the original labels and landmarks, so the nearest-neighbour resampling of the perturbed ground truth costs
    nothing. The difference from the aligned set's Dice is then the registration's own."""
    from nnreg.dataset.image_io import read_image
    from nnreg.evaluation import evaluate_pair
    from nnreg.evaluation.ground_truth import load_volume

    from benchmarks.register_pairs import rebuilt_transform, through_perturbation

    original = record["truth"]["aligned"]
    _, geometry = read_image(record["moving"]["aligned"])
    carried = through_perturbation(field, geometry, rebuilt_transform(record["transform"], geometry))

    def volume(path: str | None, key: str) -> np.ndarray | None:
        return load_volume(Path(path), key) if path and Path(path).is_file() else None

    fixed_labels, moving_labels = volume(record["fixed_labels"], "labels"), volume(original["moving_labels"], "labels")
    fixed_points, moving_points = (volume(record["fixed_landmarks"], "landmarks"),
                                   volume(original["moving_landmarks"], "landmarks"))
    wanted = [m for m, ok in (("dice", fixed_labels is not None and moving_labels is not None),
                              ("tre", fixed_points is not None and moving_points is not None)) if ok]
    if not wanted:
        return {}
    values = evaluate_pair(carried.astype(np.float64), fixed_labels, moving_labels, fixed_points, moving_points,
                           labels=labels, metrics=wanted)
    return {f"{k}_exact": v for k, v in values.items()}


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    """The row's means over its pairs."""
    for key in ("dice", "hd95", "tre", "ndv", "dice_exact", "tre_exact", "seconds", "cpu_seconds", "log_seconds"):
        values = [p[key] for p in row["pairs"] if p.get(key) is not None]
        row[key] = float(np.mean(values)) if values else None
    return row


def rescore(result: dict[str, Any], out: Path, labels: list[float] | None) -> dict[str, Any]:
    """The exact scores (:func:`exact_scores`) added to an earlier run's JSON from the fields it wrote under ``out``
    (``--rescore``); its other metrics and seconds are kept."""
    from nnreg.dataset.image_io import read_displacement

    for row in result["rows"]:
        for entry in row["pairs"]:
            if row["set"] == "aligned":
                entry.update({f"{k}_exact": entry[k] for k in ("dice", "tre") if entry.get(k) is not None})
                continue
            record = result["pairs"][entry["pair"]]
            folder = out / row["set"] / row["method"].replace("=", "-").replace(",", "_") / f"pair{entry['pair']:02d}"
            entry.update(exact_scores(read_displacement(folder / "field.nii.gz"), record, labels))
        summarise(row)
    return result
