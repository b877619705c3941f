"""Trained model folders: find one, list its folds, read its checkpoints safely.

Layout (written by the trainer): ``<nnReg_results>/<DatasetName>/<Trainer>__<Plans>__<configuration>/`` with
``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` and ``fold_<X>/checkpoint_{final,best,latest}.pth``.
A checkpoint is a ``torch.save`` dict ``{"format_version": 1, "network_weights": state_dict, "trainer_name",
"init_args": {"dataset_name", "plans_name", "configuration", "fold", "hyperparameters"}, "plans_configuration",
"architecture", ...}``.

Each fold is built from **its own checkpoint**: its ``architecture`` and the preprocessing keys of its
``plans_configuration`` (spacing, resampling, crop, shape, normalisation) override the model folder's
``plans.json``, which supplies everything else (and everything for checkpoints of older nnreg versions, which
carry neither). Folds whose preprocessing differs cannot be averaged on one grid: :func:`read_trained_model`
refuses them in one line that names the folds of each group.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from nnreg.dataset.locate import resolve_dataset_name
from nnreg.planning.plans import ConfigurationPlan, Plans
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.safe_load import UnreadableCheckpointError, load_tensors_only

logger = logging.getLogger(__name__)

DEFAULT_TRAINER = "nnRegTrainer"
DEFAULT_PLANS = "nnRegPlans"
DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_CPU_CONFIGURATION = "3d_halfres"   # on CPU, for models planned for a GPU (see default_configuration)
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """``<Trainer>__<Plans>__<configuration>``, the folder name nnU-Net users know."""
    return f"{trainer}__{plans}__{configuration}"


def _planned_for_cpu(folder: Path) -> bool:
    """Whether a model folder's plans were made with ``nnreg_plan_and_preprocess --device cpu``."""
    try:
        return Plans.load(folder / "plans.json").planner.get("device") == "cpu"
    except ConfigurationError:
        return False


def default_configuration(dataset_folder: Path, trainer: str, plans: str, device: str) -> str:
    """The configuration used when none is named.

    ``3d_fullres``, except on CPU when its plans were made for a GPU and ``3d_halfres`` was trained too: GPU plans
    at full resolution cost several times VoxelMorph's CPU time, their half-resolution model much less (see
    documentation/prediction.md). Plans made for the CPU are already cheap at full resolution.
    """
    full = dataset_folder / model_folder_name(trainer, plans, DEFAULT_CONFIGURATION)
    half = dataset_folder / model_folder_name(trainer, plans, DEFAULT_CPU_CONFIGURATION)
    if device != "cpu" or not half.is_dir() or (full.is_dir() and _planned_for_cpu(full)):
        return DEFAULT_CONFIGURATION
    return DEFAULT_CPU_CONFIGURATION


def find_model_folder(dataset: str, results: Path, trainer: str = DEFAULT_TRAINER, plans: str = DEFAULT_PLANS,
                      configuration: str | None = None, device: str = "cpu") -> Path:
    """The model folder of ``dataset`` (id or name) below ``results``; one-line error naming what is missing.

    Without ``configuration``: :func:`default_configuration` (logged)."""
    name = resolve_dataset_name(dataset, results)
    chosen = configuration is None
    if configuration is None:
        configuration = default_configuration(results / name, trainer, plans, device)
    folder = results / name / model_folder_name(trainer, plans, configuration)
    if not folder.is_dir():
        present = sorted(p.name for p in (results / name).iterdir() if p.is_dir() and "__" in p.name)
        hint = f" (trained models here: {', '.join(present)})" if present else " (no trained models yet)"
        raise ConfigurationError(f"no trained model {folder.name}{hint}", results / name)
    if chosen:   # logged only once the folder exists: an error stays the only line
        logger.info("configuration %s (default on %s; choose another with -c)", configuration, device)
    return folder


def configuration_of_folder(folder: Path) -> str | None:
    """The configuration named by a model folder (``..__..__3d_fullres`` -> ``3d_fullres``), if it follows the rule."""
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 else None


def available_folds(folder: Path, checkpoint_name: str = DEFAULT_CHECKPOINT) -> list[str]:
    """Folds (``"0"``..``"4"``, ``"all"``) that have ``checkpoint_name``, numeric first."""
    folds = []
    for sub in folder.iterdir() if folder.is_dir() else []:
        match = _FOLD_RE.match(sub.name)
        if match and (sub / checkpoint_name).is_file():
            folds.append(match.group(1))
    return sorted(folds, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def select_folds(folder: Path, use_folds: list[str | int] | tuple[str | int, ...] | None,
                 checkpoint_name: str) -> list[str]:
    """The folds to use; a requested fold that is missing is named in the error.

    ``None`` = every numbered fold present, without ``fold_all`` (nnU-Net's convention: it saw every image, so it is
    ensembled only when asked for, ``-f all`` or ``-f 0 1 2 3 4 all``); ``fold_all`` alone when it is the only one."""
    present = available_folds(folder, checkpoint_name)
    if use_folds is None:
        if not present:
            raise ConfigurationError(f"no fold_*/{checkpoint_name} in the model folder (has training finished? "
                                     f"pick another checkpoint with -chk)", folder)
        numbered = [f for f in present if f != "all"]
        if numbered and "all" in present:
            logger.info("using folds %s; fold_all is left out (ask for it with -f ... all)", ", ".join(numbered))
        return numbered or present
    wanted = [str(f) for f in use_folds]
    for fold in wanted:
        if fold not in present:
            listed = ", ".join(present) if present else "none"
            raise ConfigurationError(f"fold {fold} has no checkpoint fold_{fold}/{checkpoint_name} "
                                     f"(folds with it: {listed})", folder)
    return wanted


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU, tensors and plain data only (``weights_only``), never a full unpickle.

    A checkpoint holding any other Python object is refused in one line (``UnsafeCheckpointError``): unpickling it
    could run code, and a model may come from anyone (model zips)."""
    try:
        checkpoint = load_tensors_only(path)
    except UnreadableCheckpointError as exc:
        raise ConfigurationError(f"cannot read checkpoint ({exc.reason})", path) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ConfigurationError("not an nnreg checkpoint (no 'network_weights')", path)
    version = checkpoint.get("format_version", 1)
    if version != 1:
        raise ConfigurationError(f"checkpoint format {version} is not supported by this nnreg (expects 1)", path)
    return checkpoint


PREPROCESSING_KEYS = ("spacing", "resampling_factor", "resampled_shape", "crop_start", "shape", "normalization")


@dataclass
class TrainedModel:
    """A model folder read for inference: plans, the configuration used and one weight set per fold.

    ``configuration`` holds the preprocessing every fold shares; ``fold_architectures[k]`` is the network fold
    ``k`` was trained with (from its checkpoint, else the plans)."""

    folder: Path
    plans: Plans
    configuration_name: str
    configuration: ConfigurationPlan
    folds: list[str]
    fold_weights: list[dict[str, torch.Tensor]]
    trainer_name: str
    fold_architectures: list[dict[str, Any]] | None = None


def fold_configuration(folder_configuration: ConfigurationPlan, checkpoint: dict[str, Any]) -> ConfigurationPlan:
    """The configuration a checkpoint was trained with: its own preprocessing and architecture where recorded,
    the model folder's plans for the rest (and for checkpoints that record neither)."""
    recorded = checkpoint.get("plans_configuration")
    updates: dict[str, Any] = {}
    if isinstance(recorded, dict):
        known = {f.name for f in fields(ConfigurationPlan)}
        updates.update({k: recorded[k] for k in PREPROCESSING_KEYS if k in recorded and k in known})
        if "architecture" in recorded:
            updates["architecture"] = recorded["architecture"]
    if isinstance(checkpoint.get("architecture"), dict):
        updates["architecture"] = checkpoint["architecture"]
    return replace(folder_configuration, **updates) if updates else folder_configuration


def _preprocessing_of(config: ConfigurationPlan) -> str:
    return json.dumps({k: getattr(config, k) for k in PREPROCESSING_KEYS}, sort_keys=True)


def check_same_preprocessing(folds: list[str], configs: list[ConfigurationPlan], folder: Path) -> None:
    """One-line error naming the folds of each preprocessing when the folds were not trained on one grid."""
    groups: dict[str, list[str]] = {}
    for fold, config in zip(folds, configs):
        groups.setdefault(_preprocessing_of(config), []).append(fold)
    if len(groups) <= 1:
        return
    first, second = (json.loads(k) for k in list(groups)[:2])
    differ = ", ".join(f"{k} {first[k]} vs {second[k]}" for k in PREPROCESSING_KEYS if first[k] != second[k])
    listed = "; ".join(f"folds {', '.join(g)}" if len(g) > 1 else f"fold {g[0]}" for g in groups.values())
    options = " or ".join(f"-f {','.join(g)}" for g in groups.values())
    raise ConfigurationError(f"cannot ensemble folds trained with different preprocessing ({listed}; {differ}, "
                             f"e.g. after re-planning): choose folds of one preprocessing with {options}", folder)


def read_trained_model(folder: str | Path, use_folds: list[str | int] | tuple[str | int, ...] | None = None,
                       checkpoint_name: str = DEFAULT_CHECKPOINT, configuration: str | None = None) -> TrainedModel:
    """Read plans and fold checkpoints of a model folder; check every fold was trained on one configuration.

    ``configuration`` is what the user asked for (default: the one in the folder name); a checkpoint trained on
    another configuration is an error, since its weights would run on the wrong grid.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigurationError("model folder does not exist", folder)
    plans_path = folder / "plans.json"
    if not plans_path.is_file():
        raise ConfigurationError("model folder lacks plans.json (the trainer copies it there)", folder)
    plans = Plans.load(plans_path)
    requested = configuration or configuration_of_folder(folder)
    folds = select_folds(folder, use_folds, checkpoint_name)
    weights, trainer_name, trained_on = [], "", None
    checkpoints_configs: list[dict[str, Any]] = []
    for fold in folds:
        path = folder / f"fold_{fold}" / checkpoint_name
        checkpoint = load_checkpoint(path)
        init_args = checkpoint.get("init_args", {}) or {}
        conf = init_args.get("configuration")
        if requested is not None and conf is not None and conf != requested:
            raise ConfigurationError(f"this model was trained on configuration {conf!r}, not the requested "
                                     f"{requested!r}", path)
        if trained_on is not None and conf is not None and conf != trained_on:
            raise ConfigurationError(f"fold {fold} was trained on {conf!r} but other folds on {trained_on!r}", path)
        trained_on = conf or trained_on
        trainer_name = str(checkpoint.get("trainer_name", trainer_name))
        weights.append(checkpoint["network_weights"])
        checkpoints_configs.append({k: checkpoint[k] for k in ("plans_configuration", "architecture")
                                    if k in checkpoint})
        del checkpoint
    name = requested or trained_on
    if name is None:
        raise ConfigurationError("cannot tell which configuration this model was trained on (no "
                                 "init_args.configuration in its checkpoints); pass -c", folder)
    base = plans.configuration(name)
    configs = [fold_configuration(base, c) for c in checkpoints_configs]
    check_same_preprocessing(folds, configs, folder)
    if any(not c for c in checkpoints_configs):
        logger.debug("fold(s) %s: checkpoint without its plans entry (older nnreg); using the folder's plans.json",
                     ", ".join(f for f, c in zip(folds, checkpoints_configs) if not c))
    if _preprocessing_of(configs[0]) != _preprocessing_of(base):
        logger.warning("the model folder's plans.json was re-planned after fold(s) %s were trained: they run with "
                       "the preprocessing recorded in their checkpoints", ", ".join(folds))
    logger.info("model %s: configuration %s, fold(s) %s, %s", folder.name, name, ", ".join(folds), checkpoint_name)
    return TrainedModel(folder, plans, name, configs[0], folds, weights, trainer_name,
                        [c.architecture for c in configs])
