"""``nnreg_predict -i INPUT -o OUT -d 500``: register pairs with a trained model (a thin wrapper over the API)."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from nnreg.cli.common import SpaceSeparated, results_option, split_values, user_errors_as_one_line, verbose_option
from nnreg.utilities.errors import NnregError

logger = logging.getLogger("nnreg")


def parse_folds(values: tuple[str, ...]) -> list[str] | None:
    """``-f 0 1``, ``-f 0 -f 1`` or ``-f 0,1`` -> ["0", "1"]; nothing -> None (all folds present)."""
    folds = split_values(values)
    for fold in folds:
        if not (fold.isdigit() or fold == "all"):
            raise NnregError(f"-f: a fold is a number or 'all', got {fold!r}")
    return folds or None


def model_folder_from_options(model: str | None, dataset: str | None, configuration: str | None, plans: str,
                              trainer: str, results: str | None, device: str) -> Path:
    from nnreg.inference.model_folder import find_model_folder
    from nnreg.paths import results_folder

    if model is not None:
        if dataset is not None:
            raise NnregError("give either -m MODEL_FOLDER or -d DATASET, not both")
        return Path(model).expanduser()
    if dataset is None:
        raise NnregError("which model? give -d DATASET (with -c/-p/-tr) or -m MODEL_FOLDER")
    return find_model_folder(dataset, results_folder(results), trainer, plans, configuration, device)


def choose_device(requested: str | None) -> tuple[str, str | None]:
    """The requested device, else cuda when available (as nnreg_train), else cpu; and the line that says why, for
    the caller to log once the inputs are checked (an input error stays the only line)."""
    if requested is not None:
        return requested, None
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (f"device {device} ("
                    f"{'a CUDA GPU is available' if device == 'cuda' else 'no CUDA GPU is available'}; "
                    f"choose with --device)")


def _workers(value: int | None, num_pairs: int) -> int:
    """Default: one background worker when there is more than one pair (a single pair gains nothing)."""
    if value is not None:
        return value
    return 1 if num_pairs > 1 else 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-i", "--input", "input_path", type=click.Path(), default=None,
              help="Dataset folder (dataset.json), pairs .json ([{fixed, moving}, ...]) or .csv (fixed,moving).")
@click.option("-o", "--output", "output", type=click.Path(), required=True,
              help="Output folder for disp_<fix>_<mov>.nii.gz files.")
@click.option("-d", "--dataset", default=None,
              help="Dataset id, name or folder path of the trained model (with -c/-p/-tr).")
@click.option("-c", "--configuration", default=None,
              help="Configuration (default 3d_fullres; on CPU 3d_halfres if trained and the plans were made for a "
                   "GPU; with -m: the folder's).")
@click.option("-p", "--plans", default="nnRegPlans", show_default=True, help="Plans identifier.")
@click.option("-tr", "--trainer", default="nnRegTrainer", show_default=True, help="Trainer class name.")
@click.option("-m", "--model", default=None, type=click.Path(), help="Model folder (instead of -d/-c/-p/-tr).")
@click.option("-f", "--folds", cls=SpaceSeparated,
              help="Folds to ensemble: -f 0 1 2 (or -f 0 -f 1, -f 0,1; default: all present).")
@click.option("-chk", "--checkpoint", default="checkpoint_final.pth", show_default=True, help="Checkpoint file name.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default=None,
              help="Device (default: cuda if available, else cpu).")
@click.option("--pairs-key", default="validation", show_default=True, help="dataset.json list of pairs to register.")
@click.option("--fixed", default=None, type=click.Path(), help="One pair: the fixed image (with --moving).")
@click.option("--moving", default=None, type=click.Path(), help="One pair: the moving image (with --fixed).")
@click.option("--save-warped", is_flag=True, help="Also write the warped moving image (fixed image's header).")
@click.option("--warp-labels", type=click.Path(file_okay=False), default=None,
              help="Folder with the moving images' label maps (same file names): write them warped.")
@click.option("--itk", is_flag=True, help="Also write a physical-mm displacement field for ITK/ANTs/3D Slicer.")
@click.option("--qc", is_flag=True, help="Also write a QC PNG per pair (images, deformation grid, Jacobian).")
@click.option("--continue", "--continue_prediction", "resume", is_flag=True, help="Skip pairs whose outputs all exist.")
@click.option("--inverse", is_flag=True,
              help="Also write the inverse (moving <- fixed) field inverse/disp_<mov>_<fix>.nii.gz; logs its "
                   "inverse-consistency error.")
@click.option("--affine", is_flag=True,
              help="Affine pre-alignment of each pair before the network, for pairs not aligned in physical space "
                   "(local NCC; mutual information when the modality suffixes differ): the field is the whole "
                   "transform, the fitted affine goes to affine/<name>.json. Off by default: Learn2Reg/LUMIR pairs "
                   "are pre-aligned (see prediction.md).")
@click.option("--disable_progress_bar", "--disable-progress-bar", "disable_progress_bar", is_flag=True,
              help="No progress bar (it is also off when the output is not a terminal).")
@click.option("-npp", "num_readers", type=click.IntRange(min=0), default=None,
              help="Reader processes (0 = read in this process; default 1 for several pairs).")
@click.option("-nps", "num_writers", type=click.IntRange(min=0), default=None,
              help="Writer processes (0 = write in this process; default 1 for several pairs).")
@click.option("-num_parts", "--num-parts", "num_parts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the pairs into this many parts, one per process (with -part_id).")
@click.option("-part_id", "--part-id", "part_id", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which part this process predicts: 0 .. num_parts-1 (pairs part_id, part_id + num_parts, ...).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch CPU threads (default: all cores).")
@click.option("--channels-last", is_flag=True, help="Run 3D convolutions channels-last (see prediction.md).")
@click.option("--instance-optimization", "instance_optimization", type=click.IntRange(min=0), default=None,
              help="Refine each pair's field with N test-time optimisation steps (0 = off; default: the plans' "
                   "instance_optimization, see prediction.md).")
@click.option("--instance-optimization-settings", "instance_optimization_settings", default=None,
              metavar="KEY=VALUE,...",
              help="Override keys of the plans' instance_optimization for this run, e.g. "
                   "'grid_factor=2,lambda_reg=0.5' (see prediction.md).")
@click.option("--finer-steps", type=click.IntRange(min=0), default=8, show_default=True,
              help="After the refinement, this many steps with the similarity on the original grid when the network "
                   "grid is at least 1.5 times coarser (e.g. 3d_halfres of 1 mm images; 0: end on the network grid).")
@click.option("--finer-grid-settings", "finer_grid_settings", default=None, metavar="KEY=VALUE,...",
              help="Override keys of that stage, e.g. 'finer_velocity=false,lr=0.25' (see prediction.md).")
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms for the refinement.")
@click.option("--start", type=click.Choice(["network", "identity"]), default="network", show_default=True,
              help="Where the refinement starts: the network's field, or the identity without running the network "
                   "(an ablation: what the network adds; see prediction.md).")
@results_option
@verbose_option
@user_errors_as_one_line
def main(input_path: str | None, output: str, dataset: str | None, configuration: str | None, plans: str,
         trainer: str, model: str | None, folds: tuple[str, ...], checkpoint: str, device: str | None, pairs_key: str,
         inverse: bool, affine: bool, disable_progress_bar: bool,
         fixed: str | None, moving: str | None, save_warped: bool, warp_labels: str | None, itk: bool, qc: bool,
         resume: bool, num_readers: int | None, num_writers: int | None, num_parts: int, part_id: int,
         threads: int | None, channels_last: bool,
         instance_optimization: int | None, instance_optimization_settings: str | None, finer_steps: int,
         finer_grid_settings: str | None, deterministic: bool, start: str, results: str | None,
         verbose: bool) -> None:
    """Register image pairs with a trained nnreg model; fields in the Learn2Reg/LUMIR format."""
    from nnreg.inference import ExportOptions, collect_pairs, nnRegPredictor, predict_pairs
    from nnreg.inference.finer_grid import FinerGridSettings, parse_finer_overrides
    from nnreg.inference.refinement_settings import parse_overrides
    from nnreg.utilities.allocator import keep_freed_memory

    keep_freed_memory()      # refinement steps allocate full-size volumes: reuse them, do not fault them in
    overrides = parse_overrides(instance_optimization_settings or "")
    finer_grid = FinerGridSettings(steps=finer_steps).with_overrides(parse_finer_overrides(finer_grid_settings or ""))
    pairs = collect_pairs(input_path, pairs_key, fixed, moving)
    from nnreg.inference.pipeline import select_part

    select_part(pairs, num_parts, part_id)   # a bad -part_id stops before the model is read
    labels = Path(warp_labels).expanduser() if warp_labels else None
    if labels is not None and not labels.is_dir():
        raise NnregError("--warp-labels folder does not exist", labels)
    device, device_note = choose_device(device)
    folder = model_folder_from_options(model, dataset, configuration, plans, trainer, results, device)
    predictor = nnRegPredictor(device=device, num_threads=threads, channels_last=channels_last,
                               instance_optimization=instance_optimization, deterministic=deterministic,
                               instance_optimization_overrides=overrides,
                               finer_grid=finer_grid, start=start)
    predictor.initialize_from_trained_model_folder(folder, parse_folds(folds), checkpoint, configuration)
    predictor.check_start()
    if device_note is not None:      # said once the model is read: an input error above stays the only line
        logger.info(device_note)
    options = ExportOptions(save_warped=save_warped, labels_folder=labels, itk=itk, qc=qc, inverse=inverse,
                            affine=affine)
    summary = predict_pairs(predictor, pairs, output, options, resume=resume,
                            num_readers=_workers(num_readers, len(pairs)),
                            num_writers=_workers(num_writers, len(pairs)), progress=not disable_progress_bar,
                            num_parts=num_parts, part_id=part_id)
    click.echo(f"done: {len(summary.written)} pair(s) written, {len(summary.skipped)} skipped -> {output}")
