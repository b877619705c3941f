"""Evaluate a folder of displacement fields against evaluation configs -> the official ``metrics.json``.

Conventions: displacement files ``disp_<fix>_<mov>.nii.gz`` (long form ``disp_<fix>_<fmod>_<mov>_<mmod>``
when modalities differ and are not 0000/0001; ``.npz`` is tried first, as LUMIR 2024 does), fields
``(H, W, D, 3)`` in voxels, pull convention ``warped(x) = moving(x + u(x))``, arrays in nibabel
``(i, j, k)`` order. Output ``{"name", "aggregates", "cases", "eval_version"}``: per case
``{method name: {"mean", "detailed"}}`` keyed ``"<fix>_<mod><--<mov>_<mod>"``; aggregates per metric over
the cases that have it: ``mean``, ``std`` (population) and ``"30"`` (30th percentile, numpy's linear
quantile), NaN/inf propagate as in numpy. As the official code, every displacement file is looked up
before anything is evaluated.

The LUMIR 2025 protocol (``protocol="lumir25"``, ``nnreg_evaluate --lumir25``) follows LUMIR25's ``evaluation.py``:
NDV masked by the fixed image, the robustness figure of ``TRE_lm`` (lower is better) at the 70th percentile instead
of the 30th, ``eval_version`` 3.0, and the Dice of each evaluation set apart — ``ID_dice`` (the
``*LUMIR24_Segmentation*`` config), ``OOD_dice`` (``*HighField*``) and ``MM_dice`` (``*MultiModal*``), each
``{"mean", "std", "30"}`` over that config's pairs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnreg.dataset.image_io import read_displacement
from nnreg.dataset.learn2reg import load_dataset
from nnreg.dataset.naming import challenge_id_and_modality, short_name_allowed
from nnreg.dataset.naming import displacement_stem as naming_stem
from nnreg.evaluation.config import CasePlan, EvalPair, EvaluationConfig, EvaluationMethod, merge_configs
from nnreg.evaluation.ground_truth import ground_truth_file, grid_of, image_file, load_volume
from nnreg.evaluation.pair import NDV_MASKS, PairInputs, evaluate_methods
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import write_json

logger = logging.getLogger(__name__)

EVAL_VERSION = "2.0"  # the structure of L2R_LUMIR_Eval's metrics.json that nnreg reproduces
EVAL_VERSIONS = {"lumir24": EVAL_VERSION, "lumir25": "3.0"}   # LUMIR25's evaluation.py writes 3.0
PROTOCOLS = tuple(EVAL_VERSIONS)
# LUMIR 2025's evaluation sets: a config file whose name contains the key gives the Dice aggregate named by the value
LUMIR25_SETS = {"LUMIR24_Segmentation": "ID_dice", "HighField": "OOD_dice", "MultiModal": "MM_dice"}


@dataclass
class EvaluationResult:
    """Per-case results in the official structure, plus the zero-displacement baseline when requested.
    ``sets``: the case keys of each LUMIR 2025 evaluation set (``ID_dice`` ...) found among the configs."""

    name: str
    cases: dict[str, dict[str, dict[str, Any]]]
    baseline: dict[str, dict[str, dict[str, Any]]] | None = None
    protocol: str = "lumir24"
    sets: dict[str, list[str]] | None = None
    missing: list[str] | None = None    # pairs left out for want of a field (``only_present``); None: none asked

    def aggregates(self) -> dict[str, dict[str, float]]:
        """The aggregates of :attr:`protocol` (module docstring)."""
        out = aggregate(self.cases, self.protocol)
        for set_name, keys in (self.sets or {}).items():
            dice = {k: {"DSC": self.cases[k]["DSC"]} for k in keys if "DSC" in self.cases.get(k, {})}
            if dice:
                out[set_name] = aggregate(dice, self.protocol)["DSC"]
        return out

    def to_json(self) -> dict[str, Any]:
        """The official structure; a partial evaluation adds ``missing_cases`` (the pairs its aggregates leave out),
        so that a partial file cannot pass for a whole one."""
        out = {"name": self.name, "aggregates": self.aggregates(), "cases": self.cases,
               "eval_version": EVAL_VERSIONS[self.protocol]}
        if self.missing:
            out["missing_cases"] = list(self.missing)
        return out


def robustness_quantile(metric: str, protocol: str = "lumir24") -> float:
    """The quantile reported as ``"30"``: the 30th percentile, but the 70th for ``TRE_lm`` under LUMIR 2025
    (the worse side of a lower-is-better metric, as LUMIR25's evaluation.py computes it)."""
    return 0.7 if protocol == "lumir25" and metric == "TRE_lm" else 0.3


def aggregate(cases: dict[str, dict[str, dict[str, Any]]], protocol: str = "lumir24") -> dict[str, dict[str, float]]:
    """Official aggregates: for each metric name (sorted), mean/std/robustness quantile of the case means."""
    names = sorted({name for case in cases.values() for name in case})
    out = {}
    for name in names:
        values = np.array([case[name]["mean"] for case in cases.values() if name in case], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out[name] = {"mean": float(values.mean()), "std": float(values.std()),
                         "30": float(np.quantile(values, robustness_quantile(name, protocol)))}
    return out


def lumir25_sets(configs: list[EvaluationConfig]) -> dict[str, list[str]]:
    """The case keys of each LUMIR 2025 evaluation set, from the configs' file names (:data:`LUMIR25_SETS`)."""
    sets: dict[str, list[str]] = {}
    for config in configs:
        stem = config.path.name if config.path is not None else ""
        for marker, set_name in LUMIR25_SETS.items():
            if marker in stem:
                sets.setdefault(set_name, []).extend(p.key for p in config.pairs)
    return sets


def displacement_stem(pair: EvalPair) -> str:
    """Name (without extension) the official evaluator looks for (:func:`nnreg.dataset.naming.displacement_stem`)."""
    return naming_stem(pair.fixed, pair.moving)


def _displacement_file(folder: Path, pair: EvalPair) -> Path | None:
    """The pair's displacement file (``.npz`` preferred, then ``.nii.gz``), None when there is none."""
    stem = displacement_stem(pair)
    return next((c for c in (Path(folder) / f"{stem}{s}" for s in (".npz", ".nii.gz")) if c.is_file()), None)


def find_displacement(folder: Path, pair: EvalPair) -> Path:
    """The pair's displacement file (:func:`_displacement_file`); one-line error naming it if absent."""
    found = _displacement_file(folder, pair)
    if found is None:
        stem = displacement_stem(pair)
        raise NnregError(f"missing displacement file {stem}.nii.gz for pair {pair.key}",
                         Path(folder) / f"{stem}.nii.gz")
    return found


def _landmark_kind(pair: EvalPair, dest: str) -> str:
    """Ground-truth folder kind for TRE; the official ``keypoints`` rule for different modalities."""
    _, fix_mod = challenge_id_and_modality(pair.fixed)
    _, mov_mod = challenge_id_and_modality(pair.moving)
    if dest == "keypoints" and not short_name_allowed(fix_mod, mov_mod):
        low, high = sorted([int(fix_mod), int(mov_mod)])
        return f"{dest}{low}{high}"
    return dest


def _reference(root: Path, relative: str) -> Path | None:
    path = image_file(root, relative)
    return path if path.is_file() else None


def load_inputs(root: Path, plan: CasePlan, ndv_mask: str) -> PairInputs:
    """Read exactly the ground truth the pair's metrics need, checking every file's grid against its image."""
    methods = list(plan.methods.values())
    pair = plan.pair
    fixed_ref, moving_ref = _reference(root, pair.fixed), _reference(root, pair.moving)
    inputs = PairInputs()
    if any(m.metric in ("dice", "hd95") for m in methods):
        inputs.fixed_labels = load_volume(ground_truth_file(root, pair.fixed, "labels"), "fixed label file", fixed_ref)
        inputs.moving_labels = load_volume(ground_truth_file(root, pair.moving, "labels"), "moving label file",
                                           moving_ref)
    for dest in sorted({m.dest for m in methods if m.metric == "tre" and m.dest}):
        kind = _landmark_kind(pair, dest)
        inputs.landmarks[dest] = (
            load_volume(ground_truth_file(root, pair.fixed, kind), "fixed landmark file", fixed_ref),
            load_volume(ground_truth_file(root, pair.moving, kind), "moving landmark file", moving_ref))
    if any(m.metric == "ndv" for m in methods):
        if ndv_mask == "moving":
            inputs.moving_image = load_volume(image_file(root, pair.moving), "moving image")
        else:
            inputs.fixed_image = load_volume(image_file(root, pair.fixed), "fixed image")
    if any(m.metric == "sdlogj" and m.masked for m in methods):
        mask_path = ground_truth_file(root, pair.fixed, "masks")
        if mask_path.is_file():
            inputs.evaluation_mask = load_volume(mask_path, "evaluation mask", fixed_ref)
        else:
            logger.warning("masked evaluation: %s not found, evaluating %s without mask", mask_path, pair.key)
    return inputs


def _check_field(field: np.ndarray, path: Path, plan: CasePlan, root: Path) -> None:
    for expected in plan.expected_shapes:
        if tuple(field.shape) != tuple(expected):
            raise NnregError(f"wrong shape: expected {tuple(expected)}, found {tuple(field.shape)}", path)
    if not plan.expected_shapes:
        reference = _reference(root, plan.pair.fixed)
        if reference is not None:
            shape = grid_of(reference, "fixed image")[0] + (3,)
            if tuple(field.shape) != shape:
                raise NnregError(f"wrong shape: expected {shape} (the fixed image grid), found "
                                 f"{tuple(field.shape)}", path)


def present_plans(disp_dir: Path, plans: list[CasePlan]) -> tuple[list[CasePlan], list[Path], list[str]]:
    """The plans whose field is in ``disp_dir``, their fields, and the keys of the others; one line when none is
    (nothing to evaluate is an error, not an empty table)."""
    found = [(plan, _displacement_file(disp_dir, plan.pair)) for plan in plans]
    present = [(plan, path) for plan, path in found if path is not None]
    if not present:
        raise NnregError(f"no displacement file for any of the {len(plans)} pair(s) to evaluate", disp_dir)
    return ([plan for plan, _ in present], [path for _, path in present],
            [plan.pair.key for plan, path in found if path is None])


def evaluate_folder(disp_dir: str | Path, root: str | Path, configs: list[EvaluationConfig],
                    ndv_mask: str = "moving", baseline_zero: bool = False,
                    protocol: str = "lumir24", only_present: bool = False) -> EvaluationResult:
    """Evaluate every pair of the (merged) configs; ``baseline_zero`` also evaluates a zero field per pair;
    ``protocol`` chooses the aggregates (module docstring; the NDV mask is the caller's). ``only_present``: the pairs
    whose field is in the folder (a run split over processes or still going), the others named in the result's
    ``missing``; without it a missing field is an error."""
    if ndv_mask not in NDV_MASKS:
        raise NnregError(f"--mask must be one of {', '.join(NDV_MASKS)}, got {ndv_mask!r}")
    if protocol not in PROTOCOLS:
        raise NnregError(f"the evaluation protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    disp_dir, root = Path(disp_dir), Path(root)
    if not disp_dir.is_dir():
        raise NnregError("displacement folder does not exist", disp_dir)
    if not root.is_dir():
        raise NnregError("ground-truth (dataset) folder does not exist", root)
    name, plans = merge_configs(configs)
    missing: list[str] | None = None
    if only_present:
        plans, files, missing = present_plans(disp_dir, plans)
        if missing:
            logger.warning("evaluating %d of %d pairs: no field for %d (%s%s)", len(plans), len(plans) + len(missing),
                           len(missing), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "")
    else:
        files = [find_displacement(disp_dir, plan.pair) for plan in plans]
    logger.info("evaluating %d pair(s) with %s", len(plans),
                ", ".join(sorted({m.name for p in plans for m in p.methods.values()})))
    cases: dict[str, dict[str, dict[str, Any]]] = {}
    baseline: dict[str, dict[str, dict[str, Any]]] | None = {} if baseline_zero else None
    for index, (plan, path) in enumerate(zip(plans, files), start=1):
        field = read_displacement(path)
        _check_field(field, path, plan, root)
        inputs = load_inputs(root, plan, ndv_mask)
        methods = list(plan.methods.values())
        cases[plan.pair.key] = evaluate_methods(field, methods, inputs, ndv_mask)
        if baseline is not None:
            baseline[plan.pair.key] = evaluate_methods(np.zeros_like(field), methods, inputs, ndv_mask)
        summary = ", ".join(f"{k} {v['mean']:.4f}" for k, v in cases[plan.pair.key].items())
        logger.info("[%d/%d] %s: %s", index, len(plans), plan.pair.key, summary)
    sets = lumir25_sets(configs) if protocol == "lumir25" else None
    return EvaluationResult(name, cases, baseline, protocol, sets, missing)


def dataset_config(root: str | Path) -> EvaluationConfig:
    """A config for a nnreg/Learn2Reg dataset's ``validation`` pairs: every metric its ground truth allows.

    Labels (Dice, HD95) when every evaluated image has a label file: the label list is every value present
    in all of them (background included). TRE when every image has a landmark file. NDV always.
    """
    dataset = load_dataset(root, training_files=False)   # ground truth only: no training images needed
    pairs = [EvalPair(p.fixed.relative, p.moving.relative) for p in dataset.validation]
    if not pairs:
        raise NnregError("dataset.json has no 'validation' pairs to evaluate", dataset.json_path)
    images = {p.relative: p for pair in dataset.validation for p in (pair.fixed, pair.moving)}
    methods = [EvaluationMethod("Non-diffeomorphic Volumes", "ndv")]
    label_files = [entry.labels_path() for entry in images.values()]
    if all(path.is_file() for path in label_files):
        common: set[float] | None = None
        for entry in images.values():
            present = set(np.unique(load_volume(entry.labels_path(), "label file", entry.path)).tolist())
            common = present if common is None else common & present
        labels = tuple(sorted(common or ()))
        logger.info("labels present in all %d evaluated images (%d): %s", len(images), len(labels),
                    ", ".join(f"{v:g}" for v in labels))
        methods += [EvaluationMethod("DSC", "dice", labels), EvaluationMethod("HD95", "hd95", labels)]
    else:
        missing = next(p for p in label_files if not p.is_file())
        logger.info("no Dice/HD95: label file %s is missing", missing)
    landmark_files = [entry.landmarks_path() for entry in images.values()]
    if all(path.is_file() for path in landmark_files):
        methods.append(EvaluationMethod("TRE_lm", "tre", dest="landmarks"))
    else:
        logger.info("no TRE: landmark file %s is missing", next(p for p in landmark_files if not p.is_file()))
    return EvaluationConfig(dataset.name, methods, None, pairs, dataset.json_path)


def write_metrics(result: EvaluationResult, path: str | Path) -> None:
    """Write ``metrics.json`` atomically (NaN/Infinity tokens as Python's json, like the official file)."""
    write_json(result.to_json(), path, indent=4)
