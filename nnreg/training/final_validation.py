"""Final validation: register held-out pairs at full original size through the predictor, score them, write
``fold_X/validation/summary.json``.

Two sets of pairs, each with the zero-displacement baseline next to the prediction:
- ``fold``: every ordered pair of the fold's held-out training images (fold ``all`` has none held out, so a few
  of its training images are used and the summary says so); capped at ``final_val_max_pairs`` (a fixed subset);
- ``dataset_validation``: the ``validation`` pairs of the raw dataset.json (never trained on, as in the
  challenge), when the raw dataset is reachable and they have labels or landmarks.
Images and ground truth are read from the raw files (``meta["source"]``/``meta["labels_source"]``); metrics
are :func:`nnreg.evaluation.evaluate_pair` (Dice and HD95 over the labels present in every label map of the set,
background included, as the challenge configs; NDV with the moving-image mask; TRE when landmarks exist).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnreg.dataset.image_io import read_image
from nnreg.dataset.learn2reg import dataset_json_path, load_dataset
from nnreg.evaluation import evaluate_pair
from nnreg.inference.predictor import nnRegPredictor
from nnreg.preprocessing.storage import case_paths
from nnreg.training.data.pairs import ordered_pairs
from nnreg.training.validation import mean_metrics
from nnreg.utilities.files import read_json, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawCase:
    """Raw files of one image: the image and, if present, its labels and landmarks."""

    name: str
    image: Path
    labels: Path | None
    landmarks: Path | None


def _existing(path: Path | str | None) -> Path | None:
    return Path(path) if path and Path(path).is_file() else None


def _landmarks_of(image: Path) -> Path | None:
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].startswith("images"):
            parts[i] = parts[i].replace("images", "landmarks", 1)
            return _existing(Path(*parts))
    return None


def fold_cases(data_folder: Path, case_ids: list[str]) -> list[RawCase]:
    """Raw files of preprocessed cases, from their metadata."""
    out = []
    for case_id in case_ids:
        meta = read_json(case_paths(data_folder, case_id)["meta"])
        image = Path(meta["source"])
        out.append(RawCase(case_id, image, _existing(meta.get("labels_source")), _landmarks_of(image)))
    return out


def dataset_validation_pairs(data_folder: Path, any_case: str) -> list[tuple[RawCase, RawCase]]:
    """The raw dataset.json's validation pairs (located from a case's source path); [] when unavailable."""
    source = Path(read_json(case_paths(data_folder, any_case)["meta"])["source"])
    root = source.parent.parent
    if dataset_json_path(root) is None:
        return []
    dataset = load_dataset(root)

    def raw(entry: Any) -> RawCase:
        return RawCase(entry.case_id, entry.path, _existing(entry.labels_path()), _existing(entry.landmarks_path()))

    pairs = [(raw(p.fixed), raw(p.moving)) for p in dataset.validation]
    return [p for p in pairs if p[0].labels and p[1].labels or p[0].landmarks and p[1].landmarks]


def _common_labels(cases: list[RawCase]) -> list[float] | None:
    if not cases or any(c.labels is None for c in cases):
        return None
    common: set[float] | None = None
    for case in cases:
        values = set(np.unique(read_image(case.labels, dtype=np.int32)[0]).astype(float).tolist())
        common = values if common is None else common & values
    return sorted(common or [])


def _score(disp: np.ndarray, fixed: RawCase, moving: RawCase, moving_image: np.ndarray,
           labels: list[float] | None) -> dict[str, float]:
    metrics = ["ndv"]
    kwargs: dict[str, Any] = {"moving_image": moving_image}
    if labels is not None and fixed.labels and moving.labels:
        metrics = ["dice", "hd95", "ndv"]
        kwargs.update(fixed_labels=read_image(fixed.labels, dtype=np.int32)[0],
                      moving_labels=read_image(moving.labels, dtype=np.int32)[0], labels=labels)
    if fixed.landmarks and moving.landmarks:
        metrics.append("tre")
        kwargs.update(fixed_landmarks=read_image(fixed.landmarks, dtype=np.int32)[0],
                      moving_landmarks=read_image(moving.landmarks, dtype=np.int32)[0])
    return evaluate_pair(disp, metrics=metrics, **kwargs)


def evaluate_pairs(predictor: nnRegPredictor, pairs: list[tuple[RawCase, RawCase]], desc: str) -> dict[str, Any]:
    """Per-pair metrics of the predicted and of the zero field, plus their means."""
    labels = _common_labels(sorted({c for p in pairs for c in p}, key=lambda c: c.name))
    rows = []
    for fixed, moving in tqdm(pairs, desc=desc, leave=False):
        start = time.perf_counter()
        fixed_image, fixed_geometry = read_image(fixed.image)
        moving_image, moving_geometry = read_image(moving.image)
        disp = predictor.predict_pair(fixed_image, moving_image, fixed_geometry, moving_geometry)
        seconds = time.perf_counter() - start
        predicted = _score(disp, fixed, moving, moving_image, labels)
        zero = _score(np.zeros_like(disp), fixed, moving, moving_image, labels)
        rows.append({"fixed": fixed.name, "moving": moving.name, **predicted,
                     **{f"{k}_zero_displacement": v for k, v in zero.items()}, "seconds": seconds})
    metric_rows = [{k: v for k, v in r.items() if k not in ("fixed", "moving")} for r in rows]
    return {"num_pairs": len(rows), "labels": labels, "mean": mean_metrics(metric_rows), "per_pair": rows}


def run_final_validation(model_folder: Path, fold: str, data_folder: Path, held_out: list[str], fold_note: str,
                         device: str, max_pairs: int, checkpoint_name: str = "checkpoint_final.pth") -> dict[str, Any]:
    """Validate ``fold`` of ``model_folder`` and write ``fold_<fold>/validation/summary.json``; returns it."""
    # the network itself is validated: no test-time refinement (instance_optimization=0)
    predictor = nnRegPredictor(device=device, instance_optimization=0).initialize_from_trained_model_folder(
        model_folder, use_folds=(fold,), checkpoint_name=checkpoint_name)
    cases = fold_cases(data_folder, held_out)
    by_name = {c.name: c for c in cases}
    pairs = [(by_name[f], by_name[m]) for f, m in ordered_pairs(held_out, limit=max_pairs, seed=0)]
    summary: dict[str, Any] = {"fold": fold, "checkpoint": checkpoint_name, "fold_pairs_note": fold_note}
    logger.info("final validation: %d pair(s) of %s at full size", len(pairs), fold_note)
    summary["fold_pairs"] = evaluate_pairs(predictor, pairs, "final validation")
    extra = dataset_validation_pairs(data_folder, held_out[0]) if held_out else []
    if extra:
        logger.info("final validation: %d validation pair(s) of dataset.json (held out from training)", len(extra))
        summary["dataset_validation"] = evaluate_pairs(predictor, extra, "dataset.json validation")
    for key in ("fold_pairs", "dataset_validation"):
        if key in summary:
            summary[key]["warnings"] = worse_than_zero_displacement(summary[key]["mean"])
    write_json(summary, model_folder / f"fold_{fold}" / "validation" / "summary.json")
    for key in ("fold_pairs", "dataset_validation"):
        if key in summary:
            logger.info("final validation (%s): %s", key, _describe(summary[key]["mean"]))
            for warning in summary[key]["warnings"]:
                logger.warning("final validation (%s): %s", key, warning)
    return summary


# metric -> True when higher is better
_DIRECTION = {"dice": True, "hd95": False, "tre": False}


def worse_than_zero_displacement(mean: dict[str, float | None]) -> list[str]:
    """One warning per accuracy metric whose mean is worse than the zero field's on the same pairs.

    A registration that is worse than not registering at all has failed, whatever its training loss says."""
    warnings = []
    for key, higher_is_better in _DIRECTION.items():
        value, zero = mean.get(key), mean.get(f"{key}_zero_displacement")
        if value is None or zero is None:
            continue
        if (value < zero) if higher_is_better else (value > zero):
            warnings.append(f"{key} {value:.4f} is worse than zero displacement ({zero:.4f}): the trained network "
                            f"does not register these pairs")
    return warnings


def _describe(mean: dict[str, float | None]) -> str:
    parts = []
    for key in ("dice", "hd95", "tre", "ndv"):
        if mean.get(key) is not None:
            zero = mean.get(f"{key}_zero_displacement")
            parts.append(f"{key} {mean[key]:.4f}" + (f" (zero displacement {zero:.4f})" if zero is not None else ""))
    return ", ".join(parts)
