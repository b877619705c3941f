"""``nnRegTrainer``: unsupervised training of the planned network, with nnU-Net's hooks.

Flow: ``run_training`` = ``on_train_start`` -> per epoch (``on_epoch_start``, ``train_step`` x iterations,
``validation_step`` per validation pair, ``on_epoch_end``) -> ``on_train_end`` (final checkpoint + final validation).
Settings live in :class:`TrainingHyperparameters` (CLI options); subclass only to change behaviour (override a
hook or :meth:`build_network_architecture`). Files are written by rank 0 only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nnreg.evaluation import evaluate_pair
from nnreg.losses import DeepSupervisedRegistrationLoss, local_ncc_loss
from nnreg.planning.plans import Plans
from nnreg.spatial import warp
from nnreg.training import budget
from nnreg.training.checkpoint import (capture_rng_state, clean_state_dict, load_checkpoint, plans_entries,
                                       restore_rng_state, save_checkpoint)
from nnreg.training.data import PairDataset, PairLoader, PairSampler, default_num_workers
from nnreg.training.distributed import DistributedContext, all_gather_objects, barrier, mean_over_ranks
from nnreg.training.final_validation import run_final_validation
from nnreg.training.guard import DivergenceGuard
from nnreg.training.hyperparameters import TrainingHyperparameters
from nnreg.training.logger import TrainingLog
from nnreg.training.progress import plot_progress
from nnreg.training.schedule import poly_lr, set_lr
from nnreg.training.symmetric import SymmetricTraining
from nnreg.training.validation import ValidationSet, mean_metrics
from nnreg.training.workspace import TrainingWorkspace
from nnreg.utilities.files import write_json
from nnreg.utilities.progress_bars import progress_bar_disabled

logger = logging.getLogger(__name__)


class nnRegTrainer:  # noqa: N801 - named like nnU-Net's nnUNetTrainer on purpose
    """Trains one fold of one configuration; see the module docstring."""

    def __init__(self, workspace: TrainingWorkspace, hyperparameters: TrainingHyperparameters,
                 device: torch.device, context: DistributedContext = DistributedContext()) -> None:
        self.workspace = workspace
        self.hp = hyperparameters
        self.device = device
        self.context = context
        self.configuration = workspace.plans.configuration(workspace.configuration)
        if self.hp.contrast_augmentation is None:      # not given to nnreg_train: the plans' choice
            self.hp = replace(self.hp, contrast_augmentation=bool(self.configuration.contrast_augmentation))
        self.current_epoch = 0
        self.best_metric: float | None = None
        self.log = TrainingLog()
        self.loss = DeepSupervisedRegistrationLoss(self.hp.lambda_ncc, self.hp.lambda_reg, self.hp.ncc_window,
                                                   self.hp.deep_supervision, self.hp.similarity)
        self.symmetric = SymmetricTraining.from_plans(getattr(self.configuration, "symmetric_training", None))
        self.network: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.loader: PairLoader | None = None
        self.validation: ValidationSet | None = None
        self.sample_position = 0
        self._epoch_start = 0.0
        self._train_outputs: list[dict[str, float]] = []
        self._log_file: logging.Handler | None = None
        self.guard = DivergenceGuard()
        self.budget_clock = time.monotonic()      # --time-budget counts from here (nnreg.training.budget)
        self._budget_fitted = False
        self._budget_schedule: budget.Schedule | None = None    # a fresh run's fitted schedule, refitted per epoch

    # -- construction ------------------------------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans: Plans, configuration: str) -> torch.nn.Module:
        """The network of a plans configuration (the predictor rebuilds it the same way)."""
        from nnreg.networks import build_network

        return build_network(plans.configuration(configuration).architecture)

    @property
    def module(self) -> torch.nn.Module:
        """The bare network (without DDP / compile wrappers)."""
        net = self.network
        net = net.module if isinstance(net, DistributedDataParallel) else net
        return getattr(net, "_orig_mod", net)

    def initialize(self) -> None:
        """Seed, build network and optimizer; deterministic mode if asked."""
        seed_everything(self.hp.seed)
        if self.hp.deterministic:
            # CUDA: cuBLAS needs a fixed workspace; grid_sample's backward has no deterministic kernel (atomics),
            # so CUDA runs warn instead of failing and are not bitwise reproducible (CPU runs are)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        network = self.build_network_architecture(self.workspace.plans, self.workspace.configuration).to(self.device)
        if self.hp.compile:
            network = torch.compile(network)
        if self.context.enabled:
            network = DistributedDataParallel(network, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        self.network = network
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.hp.lr, weight_decay=self.hp.weight_decay)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.hp.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- hooks -------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Folders, log file, copies of plans/dataset/fingerprint, data loaders, debug.json."""
        if self.network is None:
            self.initialize()
        if self.context.is_main:
            self.workspace.prepare_output()
            stamp = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
            handler = logging.FileHandler(self.workspace.fold_folder / f"training_log_{stamp}.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logging.getLogger("nnreg").addHandler(handler)
            self._log_file = handler
        if self.hp.pretrained_weights and self.current_epoch == 0:   # not when continuing from a checkpoint
            from nnreg.training.pretrained import load_pretrained_weights

            load_pretrained_weights(self.module, self.hp.pretrained_weights)
        logger.info(self.workspace.describe_split())
        num_workers = self.hp.num_workers if self.hp.num_workers is not None else \
            default_num_workers(self.device, self.context.world_size)
        sampler = PairSampler(self.workspace.train_cases, self.hp.seed, self.context.rank)
        dataset = PairDataset(self.workspace.data_folder, sampler, augment=self.hp.augmentation,
                              spatial=self.hp.spatial_augmentation, contrast=self.hp.contrast_augmentation)
        batch = self.configuration.batch_size
        # open-ended from the resume position: the trainer decides when to stop, so a run continued with other
        # --epochs / --iterations-per-epoch never runs out of samples
        self.loader = PairLoader(dataset, batch, self.sample_position, None, num_workers, self.device)
        self.validation = ValidationSet(self.workspace.data_folder, self.workspace.val_cases, self.hp.val_pairs)
        self.measure_zero_displacement()
        self.guard.remember(self.current_epoch - 1, self.module, self.optimizer)
        if self.context.is_main:
            write_json(self.debug_info(num_workers), self.workspace.fold_folder / "debug.json")
        logger.info("training %s fold %s on %s: %d epochs x %d iterations, batch %d per process x %d process(es), "
                    "%d data worker(s)", self.workspace.configuration, self.workspace.fold, self.device,
                    self.hp.epochs, self.hp.iterations_per_epoch, batch, self.context.world_size, num_workers)

    def on_epoch_start(self) -> None:
        self.network.train()
        self._apply_lr(log=True)
        self._epoch_start = time.time()
        self._train_outputs = []
        self.fit_time_budget()

    def fit_time_budget(self) -> None:
        """With ``hp.time_budget_minutes``: once per process, at its first epoch, choose epochs x iterations from
        measured step and validation times (:func:`nnreg.training.budget.fit_trainer_schedule`; it may take the
        first training steps of the epoch) and log the choice."""
        if not self.hp.time_budget_minutes or self._budget_fitted:
            return
        self._budget_fitted = True
        schedule = budget.fit_trainer_schedule(self)
        self.hp = replace(self.hp, epochs=schedule.epochs, iterations_per_epoch=schedule.iterations_per_epoch)
        self._budget_schedule = schedule if schedule.first_epoch == 0 else None
        logger.info(schedule.describe())
        if self.current_epoch > 0:      # continued: the decay follows the new number of epochs from this one on
            self._apply_lr(log=True)

    def refit_time_budget(self) -> None:
        """After an epoch of a fresh budgeted run: add or drop epochs to the measured speed (budget.refit_epochs)."""
        if self._budget_schedule is None:
            return
        epochs, epoch_seconds = budget.refit_trainer_epochs(self, self._budget_schedule)
        if epochs != self.hp.epochs:
            logger.info("time budget: %d epochs instead of %d (measured %.1f s per epoch so far)", epochs,
                        self.hp.epochs, epoch_seconds)
            self.hp = replace(self.hp, epochs=epochs)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on a batch of pairs; returns the loss terms for logging.

        The divergence guard sees the loss and the gradient norm before the step is applied: a non-finite or
        spiking step is skipped (on every rank alike) and not logged into the epoch means."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.symmetric is not None:      # both directions + inverse consistency (plans: symmetric_training)
            loss, parts = self.symmetric.step_loss(self.network, self.loss, batch["moving"], batch["fixed"],
                                                   self._autocast)
        else:
            with self._autocast():
                output = self.network(batch["moving"], batch["fixed"])
            loss, parts = self.loss(batch["moving"], batch["fixed"], output)
        loss.backward()
        max_norm = self.hp.grad_clip_norm if self.hp.grad_clip_norm else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.network.parameters(), max_norm))
        loss_value = float(loss.detach())
        problem = self.guard.step_problem(loss_value, grad_norm)
        if self.context.enabled:      # one collective decision, so the replicas never diverge
            if mean_over_ranks(1.0 if problem else 0.0, self.context, self.device) > 0 and not problem:
                problem = "a non-finite or spiking loss on another process"
        verdict = self.guard.check_step(loss_value, grad_norm, problem)
        if not verdict.apply:
            self.optimizer.zero_grad(set_to_none=True)
            if verdict.restore:
                self.guard.restore(self.module, self.optimizer, f"{self.guard.consecutive_skips} steps in a row "
                                   f"skipped ({verdict.reason})")
                self._apply_lr()
            return {"skipped": 1.0}
        self.optimizer.step()
        return {"loss": loss_value, **parts}

    def _apply_lr(self, log: bool = False) -> None:
        """Set the learning rate of the current epoch: poly decay times the divergence guard's factor."""
        lr = poly_lr(self.hp.lr, self.current_epoch, self.hp.epochs, self.hp.poly_exponent) * self.guard.lr_multiplier
        set_lr(self.optimizer, lr)
        if log:
            self.log.log("lr", lr, self.current_epoch)

    def measure_zero_displacement(self) -> None:
        """NCC of the epoch-validation pairs without any registration: the floor the guard compares with."""
        if self.guard.zero_displacement_ncc is not None or not self.validation.pairs:
            return
        values = []
        for fixed_id, moving_id in self.validation.share(self.context.rank, self.context.world_size):
            fixed_case, moving_case = self.validation.cases[fixed_id], self.validation.cases[moving_id]
            fixed = torch.from_numpy(fixed_case.image)[None, None]
            moving = torch.from_numpy(moving_case.image)[None, None]
            row = {"ncc": -float(local_ncc_loss(fixed, moving, self.hp.ncc_window))}
            if fixed_case.seg is not None and moving_case.seg is not None:
                row.update(evaluate_pair(np.zeros((*fixed_case.image.shape, 3), np.float32), metrics=["dice"],
                                         fixed_labels=fixed_case.seg, moving_labels=moving_case.seg))
            values.append(row)
        gathered = [r for rank_rows in all_gather_objects(values, self.context) for r in rank_rows]
        zero = mean_metrics(gathered)
        self.guard.zero_displacement_ncc = zero.get("ncc")
        logger.info("zero-displacement validation: NCC %.4f%s (the divergence guard's floor is %.0f%% of that NCC)",
                    zero.get("ncc") or 0.0, f", Dice {zero['dice']:.4f}" if zero.get("dice") is not None else "",
                    100 * self.guard.settings.collapse_fraction)

    def validation_step(self, fixed_id: str, moving_id: str) -> dict[str, float]:
        """Metrics of one held-out pair on the preprocessed grid: loss, NCC, Dice (labels) and NDV %."""
        fixed_case, moving_case = self.validation.cases[fixed_id], self.validation.cases[moving_id]
        fixed = torch.from_numpy(fixed_case.image)[None, None].to(self.device)
        moving = torch.from_numpy(moving_case.image)[None, None].to(self.device)
        with torch.no_grad(), self._autocast():
            output = self.network(moving, fixed)
        with torch.no_grad():
            loss, _ = self.loss(moving, fixed, output)
            disp = output.displacement.float()
            ncc = -float(local_ncc_loss(fixed, warp(moving, disp), self.hp.ncc_window))
        field = disp[0].permute(1, 2, 3, 0).cpu().numpy()
        metrics = ["dice", "ndv"] if fixed_case.seg is not None and moving_case.seg is not None else ["ndv"]
        scores = evaluate_pair(field, fixed_labels=fixed_case.seg, moving_labels=moving_case.seg,
                               moving_image=moving_case.image, metrics=metrics)
        return {"loss": float(loss), "ncc": ncc, **scores}

    def run_validation(self) -> dict[str, float | None]:
        """Validate this rank's share of the pairs; metrics averaged over all pairs of all ranks."""
        self.network.eval()
        rows = [self.validation_step(f, m) for f, m in self.validation.share(self.context.rank,
                                                                              self.context.world_size)]
        gathered = [r for rank_rows in all_gather_objects(rows, self.context) for r in rank_rows]
        return mean_metrics(gathered)

    def on_epoch_end(self, val: dict[str, float | None]) -> None:
        """Log the epoch, update curves and moving average, write checkpoints and progress.png."""
        epoch = self.current_epoch
        train = mean_metrics([o for o in self._train_outputs if "loss" in o])
        if self.guard.validation_collapsed(val.get("ncc")):
            self.guard.restore(self.module, self.optimizer, f"validation NCC {val.get('ncc'):.4f} fell below "
                               f"{self.guard.settings.collapse_fraction:.0%} of the zero-displacement NCC "
                               f"{self.guard.zero_displacement_ncc:.4f} after epoch {epoch + 1}")
        else:
            self.guard.remember(epoch, self.module, self.optimizer)
        for key, name in (("loss", "train_loss"), ("ncc", "train_ncc"), ("reg", "train_reg")):
            self.log.log(name, mean_over_ranks(train.get(key) or 0.0, self.context, self.device), epoch)
        self.log.log("val_loss", val.get("loss"), epoch)
        self.log.log("val_ncc", val.get("ncc"), epoch)
        self.log.log("val_dice", val.get("dice"), epoch)
        self.log.log("val_ndv", val.get("ndv"), epoch)
        metric = val.get("dice") if val.get("dice") is not None else val.get("ncc")
        ema = self.log.update_ema(epoch, metric, self.hp.ema_alpha)
        self.log.log("epoch_time", time.time() - self._epoch_start, epoch)
        self.current_epoch = epoch + 1
        self.refit_time_budget()
        logger.info(self.log.summary_line(epoch, self.hp.epochs))
        if not self.context.is_main:
            return
        folder = self.workspace.fold_folder
        if ema is not None and (self.best_metric is None or ema > self.best_metric):
            self.best_metric = ema
            self.save_checkpoint(folder / "checkpoint_best.pth")
            logger.info("new best %s moving average: %.4f", self.metric_name, ema)
        if self.current_epoch % self.hp.checkpoint_every == 0 or self.current_epoch == self.hp.epochs:
            self.save_checkpoint(folder / "checkpoint_latest.pth")
        plot_progress(self.log, folder / "progress.png", self.metric_name)

    def on_train_end(self) -> None:
        """Final checkpoint, stop the loader, then the final validation on rank 0."""
        if self.loader is not None:
            self.loader.close()
        if self.context.is_main:
            self.save_checkpoint(self.workspace.fold_folder / "checkpoint_final.pth")
        barrier(self.context)
        if self.context.is_main and self.hp.final_validation:
            self.perform_final_validation()
        if self._log_file is not None:
            logging.getLogger("nnreg").removeHandler(self._log_file)
            self._log_file.close()

    # -- driving -----------------------------------------------------------------------------------------
    def run_training(self) -> None:
        """Train from ``current_epoch`` to ``hp.epochs``, then the final validation."""
        self.on_train_start()
        while self.current_epoch < self.hp.epochs:
            self.on_epoch_start()
            bar = tqdm(range(self.hp.iterations_per_epoch), desc=f"epoch {self.current_epoch + 1}", leave=False,
                       disable=True if not self.context.is_main else progress_bar_disabled(), mininterval=2.0)
            for _ in bar:
                self._train_outputs.append(self.train_step(self.loader.next_batch()))
                self.sample_position = self.loader.position
                if "loss" in self._train_outputs[-1]:
                    bar.set_postfix(loss=f"{self._train_outputs[-1]['loss']:.4f}", refresh=False)
            bar.close()
            self.on_epoch_end(self.run_validation())
        self.on_train_end()

    def perform_final_validation(self, checkpoint_name: str = "checkpoint_final.pth") -> dict[str, Any]:
        """Held-out pairs at full size through the predictor; writes ``validation/summary.json``."""
        held_out, note = self.workspace.final_validation_cases()
        return run_final_validation(self.workspace.model_folder, self.workspace.fold, self.workspace.data_folder,
                                    held_out, note, str(self.device), self.hp.final_val_max_pairs, checkpoint_name)

    @property
    def metric_name(self) -> str:
        return "val Dice" if self.validation is not None and self.validation.has_labels else "val NCC"

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "network_weights": clean_state_dict(self.module.state_dict()),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": None,
            "current_epoch": self.current_epoch,
            "logging": self.log.to_json(),
            "best_metric": self.best_metric,
            "trainer_name": type(self).__name__,
            "init_args": self.workspace.init_args(self.hp.to_json()),
            "rng_state": capture_rng_state(self.sample_position),
            "guard": self.guard.to_json(),
            **plans_entries(self.configuration),   # the checkpoint describes its own network and preprocessing
        }

    def save_checkpoint(self, path: Path) -> None:
        if self.context.is_main:
            save_checkpoint(self.checkpoint_state(), path)

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, curves, epoch, RNG states and the data position from ``path``."""
        if self.network is None:
            self.initialize()
        checkpoint = load_checkpoint(path)
        self.module.load_state_dict(checkpoint["network_weights"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.current_epoch = int(checkpoint["current_epoch"])
        self.log = TrainingLog.from_json(checkpoint["logging"])
        self.log.truncate(self.current_epoch)
        self.best_metric = checkpoint.get("best_metric")
        self.guard.load_json(checkpoint.get("guard"))
        rng = checkpoint.get("rng_state") or {}
        if rng:
            restore_rng_state(rng)
        per_step = self.configuration.batch_size
        self.sample_position = int(rng.get("sampler_position", self.current_epoch * self.hp.iterations_per_epoch
                                           * per_step))
        logger.info("continuing from %s (epoch %d)", path, self.current_epoch)

    def debug_info(self, num_workers: int) -> dict[str, Any]:
        """What ``debug.json`` records: settings, plans entry, environment (no host names)."""
        params = sum(p.numel() for p in self.module.parameters())
        return {"trainer": type(self).__name__, "init_args": self.workspace.init_args(self.hp.to_json()),
                "configuration": self.configuration.to_json(), "device": str(self.device),
                "world_size": self.context.world_size, "num_workers": num_workers, "num_parameters": params,
                "torch": torch.__version__, "numpy": np.__version__, "train_cases": self.workspace.train_cases,
                "val_cases": self.workspace.val_cases, "validation_pairs": self.validation.pairs}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
