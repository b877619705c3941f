"""``nnreg_train DATASET FOLD``: train one fold of a planned configuration (a thin wrapper of ``run_training``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from nnreg.cli.common import preprocessed_option, results_option, user_errors_as_one_line, verbose_option

# the names of nnreg.training.presets.PRESETS (not imported here: --help stays fast; a test keeps them equal)
PRESET_NAMES = ("paper",)
# nnreg.losses.similarity.SIMILARITIES, likewise
SIMILARITY_NAMES = ("lncc", "mind")

# CLI option -> hyperparameter; options left unset keep the default (or, with --c, the checkpoint's value)
_HYPERPARAMETER_OPTIONS = {"epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch", "lr": "lr",
                           "lambda_reg": "lambda_reg", "lambda_ncc": "lambda_ncc", "ncc_window": "ncc_window",
                           "num_workers": "num_workers", "seed": "seed", "val_pairs": "val_pairs",
                           "checkpoint_every": "checkpoint_every", "time_budget": "time_budget_minutes",
                           "similarity": "similarity"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("dataset")
@click.argument("fold")
@click.option("-c", "--configuration", default="3d_fullres", show_default=True, help="Configuration to train.")
@click.option("-p", "--plans", default="nnRegPlans", show_default=True, help="Plans identifier.")
@click.option("-tr", "--trainer", default="nnRegTrainer", show_default=True,
              help="Trainer class: a name, package.module.Class or /path/file.py:Class.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default=None,
              help="Device (default: cuda if available, else cpu).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default 200).")
@click.option("--iterations-per-epoch", type=click.IntRange(min=1), default=None, help="Steps per epoch (default 250).")
@click.option("--c", "continue_training", is_flag=True, help="Continue from the fold's last checkpoint.")
@click.option("--val", "validation_only", is_flag=True, help="Only run the final validation (checkpoint_final).")
@click.option("--num-gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="DDP processes (GPUs; with --device cpu, gloo processes sharing the cores).")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Data-loading worker processes per training process; 0 loads in the training process.")
@click.option("--seed", type=int, default=None, help="Random seed (default 12345).")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms (bitwise resumable).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the network (opt-in).")
@click.option("--no-amp", is_flag=True, default=None, help="Disable bf16 autocast on CUDA.")
@click.option("--no-deep-supervision", is_flag=True, default=None, help="Score only the final field.")
@click.option("--no-augmentation", is_flag=True, default=None, help="No intensity augmentation.")
@click.option("--spatial-augmentation/--no-spatial-augmentation", "spatial_augmentation", default=None,
              help="Spatial augmentation (random affine + elastic per image, flips / axis swaps per pair); off by "
                   "default until measured to help.")
@click.option("--contrast-augmentation/--no-contrast-augmentation", "contrast_augmentation", default=None,
              help="A random new contrast per training image (random intensity curve, bias field, gamma, blur, "
                   "noise), for contrast-agnostic models; default: the plans' contrast_augmentation (the planner "
                   "turns it on for datasets with more than one modality).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MINUTES",
              help="Fit epochs x iterations (at most --iterations-per-epoch) and the learning-rate decay to this "
                   "wall time, measured from the first steps; training + validation end within it.")
@click.option("--no-final-validation", is_flag=True, default=None, help="Skip the full-size final validation.")
@click.option("--lr", type=float, default=None, help="Initial learning rate (default 4e-4).")
@click.option("--lambda-reg", type=float, default=None, help="Weight of the gradient regulariser (default 6).")
@click.option("--lambda-ncc", type=float, default=None, help="Weight of the NCC loss (default 1).")
@click.option("--ncc-window", type=int, default=None, help="Local NCC window (odd, default 9).")
@click.option("--similarity", type=click.Choice(SIMILARITY_NAMES), default=None,
              help="Similarity loss: local NCC (default) or MIND-SSC (contrast-agnostic, for multi-modal use).")
@click.option("--val-pairs", type=click.IntRange(min=0), default=None, help="Validation pairs per epoch (default 8).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Write checkpoint_latest.pth every N epochs (default 10).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="A named schedule; 'paper': 200 epochs of one pass over the training images each, Adam 4e-4, "
                   "λ_ncc 1, λ_reg 6, no augmentation, no clipping (explicit options win).")
@click.option("-pretrained_weights", "--pretrained-weights", "pretrained_weights", type=click.Path(dir_okay=False),
              default=None, help="Fine-tune: start from these network weights (a checkpoint_*.pth of a model with "
                                 "the same architecture); not with --c / --val.")
@click.option("--disable_progress_bar", "--disable-progress-bar", "disable_progress_bar", is_flag=True,
              help="No progress bar (it is also off when the output is not a terminal).")
@preprocessed_option
@results_option
@verbose_option
@user_errors_as_one_line
def main(dataset: str, fold: str, pretrained_weights: str | None, disable_progress_bar: bool,
         configuration: str, plans: str, trainer: str, device: str | None,
         continue_training: bool, validation_only: bool, num_gpus: int, deterministic: bool | None,
         compile_: bool | None, no_amp: bool | None, no_deep_supervision: bool | None,
         no_augmentation: bool | None, spatial_augmentation: bool | None, contrast_augmentation: bool | None,
         no_final_validation: bool | None,
         preprocessed: str | None,
         results: str | None, verbose: bool, preset: str | None,
         **numbers: Any) -> None:
    """Train FOLD (0-4 or all) of DATASET (id, name or path to its folder), unsupervised: local NCC + λ‖∇v‖²,
    deep supervision."""
    from nnreg.training import run_training

    overrides = {_HYPERPARAMETER_OPTIONS[k]: v for k, v in numbers.items() if v is not None}
    if disable_progress_bar:
        from nnreg.utilities.progress_bars import DISABLE_ENV

        os.environ[DISABLE_ENV] = "1"           # inherited by every training process this command starts
    if pretrained_weights is not None:
        from nnreg.training.pretrained import read_pretrained_state
        from nnreg.utilities.errors import ConfigurationError

        if continue_training or validation_only:
            raise ConfigurationError("-pretrained_weights starts a new training; it cannot be combined with --c or "
                                     "--val (the checkpoint already holds the weights)")
        read_pretrained_state(pretrained_weights)   # a missing or unreadable file fails here, before any process
        overrides["pretrained_weights"] = str(Path(pretrained_weights).expanduser().resolve())
    if "time_budget_minutes" in overrides and "epochs" in overrides:
        from nnreg.utilities.errors import ConfigurationError

        raise ConfigurationError("--time-budget chooses the number of epochs: give either --time-budget or --epochs")
    for flag, key, value in ((deterministic, "deterministic", True), (compile_, "compile", True),
                             (no_amp, "amp", False), (no_deep_supervision, "deep_supervision", False),
                             (no_augmentation, "augmentation", False),
                             (no_final_validation, "final_validation", False)):
        if flag:
            overrides[key] = value
    if spatial_augmentation is not None:
        overrides["spatial_augmentation"] = spatial_augmentation
    if contrast_augmentation is not None:
        overrides["contrast_augmentation"] = contrast_augmentation
    folder = run_training(dataset, fold, configuration=configuration, plans=plans, trainer=trainer, device=device,
                          continue_training=continue_training, validation_only=validation_only, num_gpus=num_gpus,
                          overrides=overrides, preprocessed=preprocessed, results=results, preset=preset)
    if os.environ.get("RANK", "0") == "0":       # under torchrun every rank returns here; one line is enough
        click.echo(f"done: {folder}")


if __name__ == "__main__":
    main()
