"""``nnreg_plan_and_preprocess -d 500``: fingerprint, plan and preprocess a Learn2Reg dataset."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from nnreg.cli.common import SpaceSeparated, preprocessed_option, raw_option, user_errors_as_one_line, verbose_option
from nnreg.planning.decision import CPU_TRADE_ORDERS
from nnreg.planning.planner import PlannerSettings
from nnreg.planning.plans import Plans
from nnreg.planning.report import plans_table
from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from nnreg.utilities.errors import ConfigurationError

if TYPE_CHECKING:
    from nnreg.dataset.learn2reg import Learn2RegDataset

logger = logging.getLogger("nnreg")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-d", "--dataset", "datasets", cls=SpaceSeparated, required=True,
              help="Dataset id (500), name (Dataset500_OpenBrains80) or path to a dataset folder; several: -d 500 501 (or -d 500 -d 501).")
@click.option("-p", "--plans-name", default="nnRegPlans", show_default=True, help="Plans identifier.")
@click.option("-c", "--configuration", "configurations", cls=SpaceSeparated,
              help="Configurations to preprocess (default: all planned).")
@click.option("-np", "--num-processes", default=2, show_default=True, type=click.IntRange(min=0),
              help="Worker processes; 0 runs everything in this process.")
@click.option("--clean", is_flag=True, help="Redo everything: fingerprint, plans and preprocessed data.")
@click.option("--overwrite-plans", is_flag=True, help="Re-plan even if this plans file exists (drops hand edits).")
@click.option("--no-pp", "no_pp", is_flag=True, help="Only fingerprint and plan; do not preprocess.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Device the plans target (GPU memory or RAM budget). Default: cuda with --gpu-memory-target "
                   "alone, cpu with --memory-target alone, else cuda where a CUDA device is present, else cpu "
                   "(it says which).")
@click.option("--gpu-memory-target", type=float, default=None,
              help="GPU memory budget in GB for --device cuda (default 24); alone, it plans for such a GPU even "
                   "on a machine without one.")
@click.option("--memory-target", type=float, default=None,
              help="RAM budget in GB for --device cpu (default: half of this machine's or container's RAM).")
@click.option("--cpu-seconds-per-pair", type=click.FloatRange(min=0.1), default=None,
              help="--device cpu: target seconds of one training step per pair (default 5).")
@click.option("--cpu-trade-order", type=click.Choice(list(CPU_TRADE_ORDERS)), default=None,
              help="--device cpu: what is given up first for time: width-first (width down to 8, then training "
                   "steps, then resolution; default) or resolution-first (half resolution before widths below 16).")
@click.option("--cpu-max-slowdown", type=click.FloatRange(min=1.0), default=None,
              help="--device cpu, width-first: keep a resolution while its width-8 step needs at most this many "
                   "times --cpu-seconds-per-pair (fewer steps in the same time; default 8).")
@click.option("--cpu-inference-seconds", type=click.FloatRange(min=0.1), default=None,
              help="Target seconds to register one pair on 2 CPU cores with 3d_halfres, the CPU deployment "
                   "configuration, on any device (default 15).")
@click.option("--contrast-augmentation/--no-contrast-augmentation", "contrast_augmentation", default=None,
              help="Record contrast augmentation on / off in the plans for training (default: on when dataset.json "
                   "names more than one modality, e.g. LUMIR 2025's T1w <- T2w validation pairs; see planner.md).")
@raw_option
@preprocessed_option
@verbose_option
@user_errors_as_one_line
def main(datasets: tuple[str, ...], plans_name: str, configurations: tuple[str, ...], num_processes: int,
         clean: bool, overwrite_plans: bool, no_pp: bool, device: str | None, gpu_memory_target: float | None,
         memory_target: float | None, cpu_seconds_per_pair: float | None, cpu_trade_order: str | None,
         cpu_max_slowdown: float | None, cpu_inference_seconds: float | None, contrast_augmentation: bool | None,
         raw: str | None, preprocessed: str | None, verbose: bool) -> None:
    """Verify, fingerprint, plan and preprocess Learn2Reg/LUMIR datasets."""
    from nnreg.planning.budget import memory_budget_gb
    from nnreg.planning.contrast import DatasetModalities

    device, reason = _target_device(device, gpu_memory_target, memory_target)
    budget = memory_budget_gb(device, gpu_memory_target, memory_target)
    loaded = _check_datasets(datasets, raw)   # every dataset's inputs before any work: a bad one is the only line
    extra = {key: value for key, value in (("cpu_seconds_per_pair", cpu_seconds_per_pair),
                                           ("cpu_trade_order", cpu_trade_order),
                                           ("cpu_max_slowdown", cpu_max_slowdown),
                                           ("cpu_inference_seconds", cpu_inference_seconds)) if value}
    settings = PlannerSettings(plans_name=plans_name, device=device, memory_target_gb=budget, extra=extra,
                               contrast_augmentation=contrast_augmentation)
    for spec, dataset in zip(datasets, loaded):
        options = PlanAndPreprocessOptions(
            dataset=spec, raw=raw, preprocessed=preprocessed, configurations=configurations,
            num_processes=num_processes, clean=clean, overwrite_plans=overwrite_plans, no_preprocessing=no_pp,
            planner=replace(settings, modalities=DatasetModalities.of(dataset)),
        )
        out, plans = plan_and_preprocess(options)
        click.echo(planned_for(plans, device, budget, reason))   # after success: a bad dataset stays one line
        kept = _kept_contrast_augmentation(plans, contrast_augmentation)
        if kept:
            click.echo(kept)
        click.echo(plans_table(plans))
        click.echo(f"done: {out}")


def _target_device(device: str | None, gpu_memory_target: float | None,
                   memory_target: float | None) -> tuple[str, str]:
    """The device the plans target and why. A GPU memory target alone plans for a GPU of that memory, also on a
    machine without one (a cluster login node); a RAM target alone plans for the CPU; otherwise --device, else
    cuda where a CUDA device is present. Targets must be positive, and match --device."""
    from nnreg.planning.budget import default_device

    for flag, value in (("--gpu-memory-target", gpu_memory_target), ("--memory-target", memory_target)):
        if value is not None and not value > 0:
            raise ConfigurationError(f"{flag} must be a positive number of GB, got {value:g}")
    if device == "cpu" and gpu_memory_target is not None:
        raise ConfigurationError("--gpu-memory-target is the budget of --device cuda; with --device cpu give "
                                 "--memory-target (GB of RAM)")
    if device == "cuda" and memory_target is not None:
        raise ConfigurationError("--memory-target is the RAM budget of --device cpu; with --device cuda give "
                                 "--gpu-memory-target (GB of GPU memory)")
    if device is not None:
        return device, f"--device {device}"
    if gpu_memory_target is not None and memory_target is None:
        return "cuda", "--gpu-memory-target given; no local GPU is needed to plan"
    if memory_target is not None and gpu_memory_target is None:
        return "cpu", "--memory-target given"
    device = default_device()
    return device, ("a CUDA device is present" if device == "cuda" else
                    "no CUDA device found; give --device cuda or --gpu-memory-target to plan for a GPU")


def _check_datasets(datasets: tuple[str, ...], raw: str | None) -> list[Learn2RegDataset]:
    """Find and read every dataset, and check it has enough training images, before any is worked on."""
    from nnreg.dataset.learn2reg import check_training_pool, load_dataset
    from nnreg.dataset.locate import find_raw_dataset

    loaded = []
    for spec in datasets:
        loaded.append(load_dataset(find_raw_dataset(spec, raw)))
        check_training_pool(loaded[-1])
    return loaded


def _kept_contrast_augmentation(plans: Plans, requested: bool | None) -> str | None:
    """A line when --(no-)contrast-augmentation asked for what a reused plans file does not record."""
    differ = [name for name, cfg in plans.configurations.items()
              if requested is not None and cfg.contrast_augmentation != requested]
    if not differ:
        return None
    return (f"--{'' if requested else 'no-'}contrast-augmentation: the plans file {plans.plans_name}.json was kept "
            f"as it was ({', '.join(differ)} record contrast_augmentation {'off' if requested else 'on'}; "
            f"--overwrite-plans re-plans, or edit the file)")


def planned_for(plans: Plans, device: str, budget: float, reason: str) -> str:
    """One line: the device and memory the plans target (those of a reused plans file, when they differ)."""
    planned_device = str(plans.planner.get("device", device))
    planned_budget = plans.planner.get("memory_target_gb", budget)
    what = "a GPU" if planned_device == "cuda" else "the CPU" if planned_device == "cpu" else planned_device
    memory = "GPU memory" if planned_device == "cuda" else "RAM"
    line = f"planned for {what} with {planned_budget:g} GB of {memory}"
    if planned_device != device or planned_budget != budget:
        asked = f"{'a GPU' if device == 'cuda' else 'the CPU'} with {budget:g} GB"
        return f"{line}: the plans file {plans.plans_name}.json was kept as it was (asked for {asked}; " \
               f"--overwrite-plans re-plans)"
    return f"{line} ({reason})"
