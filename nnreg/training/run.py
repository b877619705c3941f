"""``run_training``: the Python API behind ``nnreg_train`` (resolve inputs, pick processes, train or validate).

Everything a user can get wrong is checked here, before any process starts, with one-line errors: the dataset
is not preprocessed, the fold or trainer is unknown, there is no checkpoint to continue from. With ``--c`` the
checkpoint's hyperparameters are used and only explicitly given ``overrides`` change them (each change logged).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnreg.dataset.locate import resolve_dataset_name
from nnreg.paths import preprocessed_folder, results_folder
from nnreg.training import distributed
from nnreg.training.checkpoint import load_checkpoint
from nnreg.training.find_trainer import find_trainer
from nnreg.training.hyperparameters import TrainingHyperparameters
from nnreg.training.presets import preset_overrides
from nnreg.training.workspace import TrainingWorkspace
from nnreg.utilities.errors import ConfigurationError, NnregError
from nnreg.utilities.logging import configure_logging

logger = logging.getLogger(__name__)

CONTINUE_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


@dataclass
class TrainingJob:
    """Everything a training process needs (picklable: spawned DDP ranks receive it)."""

    workspace: TrainingWorkspace
    trainer: str
    hyperparameters: TrainingHyperparameters
    device: str
    checkpoint: Path | None
    validation_only: bool


def resolve_device(requested: str | None) -> torch.device:
    """``cuda`` if available else ``cpu`` by default; a requested device that is missing is an error."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda requested but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError("--device mps requested but MPS is not available")
    return device


def _checkpoint_to_continue(workspace: TrainingWorkspace) -> Path:
    """The newer of checkpoint_final/latest (a run extended with ``--epochs`` and stopped again has a newer
    latest than its old final), else checkpoint_best."""
    present = [workspace.fold_folder / n for n in CONTINUE_ORDER[:2] if (workspace.fold_folder / n).is_file()]
    if present:
        return max(present, key=lambda p: p.stat().st_mtime_ns)
    best = workspace.fold_folder / CONTINUE_ORDER[2]
    if best.is_file():
        return best
    raise ConfigurationError("no checkpoint to continue from (start without --c)", workspace.fold_folder)


def _hyperparameters(overrides: dict[str, Any], checkpoint: Path | None) -> TrainingHyperparameters:
    if checkpoint is None:
        return TrainingHyperparameters().with_overrides(overrides)
    state = load_checkpoint(checkpoint)
    saved = TrainingHyperparameters.from_json(state["init_args"].get("hyperparameters", {}))
    trained = int(state.get("current_epoch", 0))
    epochs = overrides.get("epochs", saved.epochs)
    if epochs < trained:
        raise ConfigurationError(f"--epochs {epochs} is less than the {trained} epochs already trained; continue "
                                 f"with --epochs {trained} or more (or train from scratch without --c)", checkpoint)
    for key, value in overrides.items():
        if getattr(saved, key) != value:
            logger.warning("continuing with %s = %s (the checkpoint was trained with %s)", key, value,
                           getattr(saved, key))
    return saved.with_overrides(overrides)


def prepare_job(dataset: str, fold: str | int, configuration: str = "3d_fullres", plans: str = "nnRegPlans",
                trainer: str = "nnRegTrainer", device: str | None = None, continue_training: bool = False,
                validation_only: bool = False, overrides: dict[str, Any] | None = None,
                preprocessed: str | Path | None = None, results: str | Path | None = None,
                preset: str | None = None, world_size: int = 1) -> TrainingJob:
    """Check every input and return the job description (no process is started).

    ``preset`` (``nnreg.training.presets``) sets a named schedule for ``world_size`` processes; explicit
    ``overrides`` win over it."""
    pre_root = preprocessed_folder(preprocessed)
    try:
        name = resolve_dataset_name(dataset, pre_root)
    except NnregError:
        raise ConfigurationError(f"dataset {dataset} is not preprocessed in {pre_root} (run nnreg_plan_and_preprocess "
                                 f"-d {dataset} first)") from None
    trainer_class = find_trainer(trainer)
    workspace = TrainingWorkspace.create(name, pre_root / name, results_folder(results) / name, plans, configuration,
                                         str(fold), trainer_class.__name__)
    torch_device = resolve_device(device)
    checkpoint = None
    if validation_only:
        checkpoint = workspace.fold_folder / "checkpoint_final.pth"
        if not checkpoint.is_file():
            raise ConfigurationError("--val needs checkpoint_final.pth (train first, or continue with --c)",
                                     workspace.fold_folder)
    elif continue_training:
        checkpoint = _checkpoint_to_continue(workspace)
    elif (workspace.fold_folder / "checkpoint_latest.pth").is_file():
        logger.warning("%s already has checkpoints; training from scratch overwrites them (use --c to continue)",
                       workspace.fold_folder)
    overrides = dict(overrides or {})
    if preset is not None:
        batch = workspace.plans.configuration(configuration).batch_size
        overrides = {**preset_overrides(preset, len(workspace.train_cases), batch, world_size), **overrides}
    return TrainingJob(workspace, trainer, _hyperparameters(overrides, checkpoint), str(torch_device),
                       checkpoint, validation_only)


def execute_job(job: TrainingJob) -> None:
    """Run a job in this process (one rank of it when distributed)."""
    context = distributed.context_from_environment() or distributed.DistributedContext()
    configure_logging()
    if not context.is_main:
        logging.getLogger("nnreg").setLevel(logging.WARNING)
    device = distributed.device_for(torch.device(job.device), context)
    distributed.initialize(context, device)
    try:
        trainer = find_trainer(job.trainer)(job.workspace, job.hyperparameters, device, context)
        trainer.initialize()
        if job.checkpoint is not None:
            trainer.load_checkpoint(job.checkpoint)
        if job.validation_only:
            if context.is_main:
                trainer.perform_final_validation()
            return
        trainer.run_training()
    finally:
        distributed.shutdown()


def run_training(dataset: str, fold: str | int, configuration: str = "3d_fullres", plans: str = "nnRegPlans",
                 trainer: str = "nnRegTrainer", device: str | None = None, continue_training: bool = False,
                 validation_only: bool = False, num_gpus: int = 1, overrides: dict[str, Any] | None = None,
                 preprocessed: str | Path | None = None, results: str | Path | None = None,
                 preset: str | None = None) -> Path:
    """Train (or with ``validation_only`` only validate) one fold; returns the fold's results folder.

    ``num_gpus`` > 1 starts that many DDP processes (on the CPU: gloo processes sharing the cores); under
    ``torchrun`` the processes already exist and ``num_gpus`` is ignored.
    """
    context = distributed.context_from_environment()
    world_size = context.world_size if context is not None else num_gpus
    job = prepare_job(dataset, fold, configuration, plans, trainer, device, continue_training, validation_only,
                      overrides, preprocessed, results, preset=preset, world_size=world_size)
    if num_gpus < 1:
        raise ConfigurationError("--num-gpus must be >= 1")
    if distributed.context_from_environment() is not None or num_gpus == 1 or validation_only:
        execute_job(job)
    else:
        if torch.device(job.device).type == "cuda" and torch.cuda.device_count() < num_gpus:
            raise ConfigurationError(f"--num-gpus {num_gpus} but only {torch.cuda.device_count()} GPU(s) are visible")
        distributed.spawn(execute_job, num_gpus, (job,))
    return job.workspace.fold_folder
