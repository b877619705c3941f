"""The ``nnreg_plan_and_preprocess`` pipeline: verify -> fingerprint -> plans -> splits -> preprocessed arrays.

Output folder ``<nnReg_preprocessed>/<dataset>/``: ``dataset.json`` (copy), ``dataset_fingerprint.json``,
``<plans_name>.json``, ``splits_final.json`` and one ``<plans_name>_<configuration>/`` folder per configuration.
An existing plans file is reused as it is (so hand edits win) unless ``overwrite_plans``; other plans
identifiers' files are never touched.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nnreg.dataset.learn2reg import Learn2RegDataset, check_training_pool, load_dataset
from nnreg.dataset.locate import find_raw_dataset
from nnreg.fingerprint import extract_fingerprint
from nnreg.paths import preprocessed_folder
from nnreg.planning.contrast import DatasetModalities
from nnreg.planning.decision import memory_driven_decision
from nnreg.planning.planner import DecisionFunction, PlannerSettings, plan_experiment
from nnreg.planning.plans import Plans
from nnreg.preprocessing.preprocessor import preprocess_dataset
from nnreg.preprocessing.splits import make_splits, user_splits
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.files import atomic_path, no_empty_folder_left, read_json, write_json
from nnreg.utilities.run_lock import holding_run_lock

logger = logging.getLogger(__name__)


@dataclass
class PlanAndPreprocessOptions:
    """Everything ``nnreg_plan_and_preprocess`` can be told (CLI flags map one to one)."""

    dataset: str
    raw: str | None = None
    preprocessed: str | None = None
    configurations: tuple[str, ...] = ()
    num_processes: int = 2
    clean: bool = False
    overwrite_plans: bool = False
    no_preprocessing: bool = False
    planner: PlannerSettings = field(default_factory=PlannerSettings)


def _fingerprint(dataset: Learn2RegDataset, out: Path, options: PlanAndPreprocessOptions) -> dict[str, Any]:
    path = out / "dataset_fingerprint.json"
    if path.is_file() and not options.clean:
        cached = read_json(path)
        if sorted(cached.get("cases", {})) == sorted(e.case_id for e in dataset.training):
            logger.info("fingerprint: reusing %s", path)
            return cached
    fingerprint = extract_fingerprint(dataset, options.num_processes)
    write_json(fingerprint, path)
    logger.info("fingerprint: %d images, median shape %s, median spacing %s", fingerprint["num_images"],
                fingerprint["median_shape"], fingerprint["median_spacing"])
    return fingerprint


def _plans(fingerprint: dict[str, Any], out: Path, options: PlanAndPreprocessOptions,
           decide: DecisionFunction) -> Plans:
    path = out / f"{options.planner.plans_name}.json"
    if path.is_file() and not (options.overwrite_plans or options.clean):
        plans = Plans.load(path)
        if plans.dataset_name != fingerprint["dataset_name"]:
            raise ConfigurationError(f"plans belong to dataset {plans.dataset_name}, not "
                                     f"{fingerprint['dataset_name']}", path)
        logger.info("plans: reusing %s (hand edits kept; --overwrite-plans to re-plan)", path)
        return plans
    plans = plan_experiment(fingerprint, options.planner, decide)
    plans.save(path)
    logger.info("plans: wrote %s", path)
    return plans


def _splits(dataset: Learn2RegDataset, out: Path) -> list[dict[str, Any]]:
    ids = [e.case_id for e in dataset.training]
    path = out / "splits_final.json"
    splits = user_splits(dataset.root, ids)
    if splits is None and path.is_file():
        existing = read_json(path)
        covered = sorted({c for s in existing for c in s["val"]}) if isinstance(existing, list) else []
        if covered == sorted(ids):
            return existing
    if splits is None:
        splits = make_splits(ids)
    write_json(splits, path)
    return splits


def plan_and_preprocess(options: PlanAndPreprocessOptions,
                        decide: DecisionFunction = memory_driven_decision) -> tuple[Path, Plans]:
    """Run the whole stage for one dataset; returns (its preprocessed folder, its plans)."""
    root = find_raw_dataset(options.dataset, options.raw)
    dataset = load_dataset(root)
    check_training_pool(dataset)   # before fingerprinting: too few images is found at once, naming the file
    out = preprocessed_folder(options.preprocessed) / dataset.name
    # one run per dataset at a time (a second one's --clean would re-plan under the first one's preprocessing); a run
    # that fails leaves no folder it created empty (a bad image is found by the fingerprint, before any file is written)
    with no_empty_folder_left(out), holding_run_lock(out, f"planning and preprocessing of {dataset.name}"):
        return _plan_and_preprocess(dataset, out, options, decide)


def _plan_and_preprocess(dataset: Learn2RegDataset, out: Path, options: PlanAndPreprocessOptions,
                         decide: DecisionFunction) -> tuple[Path, Plans]:
    fingerprint = _fingerprint(dataset, out, options)   # reads every image: a bad one stops the run here
    with atomic_path(out / "dataset.json") as tmp:
        shutil.copyfile(dataset.json_path, tmp)
    if options.planner.modalities is None:     # the contrast-augmentation rule needs the dataset's modalities
        options = replace(options, planner=replace(options.planner, modalities=DatasetModalities.of(dataset)))
    plans = _plans(fingerprint, out, options, decide)
    _splits(dataset, out)
    names = options.configurations or tuple(plans.configurations)
    for name in names:
        config = plans.configuration(name)
        if options.no_preprocessing:
            continue
        preprocess_dataset(dataset, config, out / config.data_identifier, options.num_processes, options.clean)
    return out, plans
