"""``nnreg_register --fixed F --moving M -o OUTDIR``: register two images, without a dataset or a trained model, or
with one (``-m MODEL_FOLDER`` or ``-d DATASET -c CONFIG -f FOLDS`` as in ``nnreg_predict``) starting the deformable
stage."""
from __future__ import annotations

import click

from nnreg.cli.common import SpaceSeparated, results_option, run_and_exit, user_errors_as_one_line, verbose_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--fixed", required=True, type=click.Path(), help="Fixed image (any 3D image SimpleITK/nibabel reads).")
@click.option("--moving", required=True, type=click.Path(), help="Moving image (any grid, orientation, units).")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None,
              help="Folder for every output: warped.nii.gz, field.nii.gz, transform0GenericAffine.mat, "
                   "transform1Warp.nii.gz, qc.png, register.log, register.json (and the --inverse / "
                   "--moving-labels files). Existing files there are replaced.")
@click.option("--warped", type=click.Path(dir_okay=False), default=None, help="Warped moving image (fixed grid).")
@click.option("--field", type=click.Path(dir_okay=False), default=None,
              help="Whole transform as a Learn2Reg field on the fixed grid (voxels, pull, into the moving image's "
                   "voxel indices).")
@click.option("--transform", "transform", default=None,
              help="ITK/ANTs prefix: PREFIX0GenericAffine.mat and PREFIX1Warp.nii.gz (mm); apply with "
                   "antsApplyTransforms -t PREFIX1Warp.nii.gz -t PREFIX0GenericAffine.mat.")
@click.option("--moving-labels", type=click.Path(dir_okay=False), default=None,
              help="Label map on the moving image's grid, warped with nearest neighbour (warped_labels.nii.gz).")
@click.option("--fixed-mask", type=click.Path(dir_okay=False), default=None,
              help="Fixed-image mask (non-zero = counted): restricts every stage's similarity.")
@click.option("--moving-mask", type=click.Path(dir_okay=False), default=None,
              help="Moving-image mask (non-zero = counted; moves with the moving image).")
@click.option("--inverse", is_flag=True, help="Also write the inverse: inverse_field.nii.gz (moving grid), "
                                              "inverse_warped.nii.gz and PREFIX1InverseWarp.nii.gz.")
@click.option("--similarity", type=click.Choice(["lncc", "mind"]), default=None,
              help="lncc: local NCC (same contrast); mind: other contrasts (mutual information for the affine stage, "
                   "MIND-SSC for the deformable one). Default: mind when the file names carry different LUMIR "
                   "modality suffixes (_0000 / _0001), else lncc.")
@click.option("--working-spacing", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Isotropic spacing (mm) of the grid the optimisation runs on.")
@click.option("--final-spacing", type=click.FloatRange(min=0.1), default=None,
              help="Spacing (mm) of the finer grid the deformable stage ends on (default: the fixed image's finest "
                   "spacing, but not below 1 mm: a 0.7 mm pair at 0.67 mm takes ~3x the time and 12.6 GB); used when "
                   "at least 1.5 times finer than the working spacing.")
@click.option("--finer-steps", type=click.IntRange(min=0), default=4, show_default=True,
              help="Velocity steps on that finer grid (0: none; the correction below still runs there unless its "
                   "steps are 0 too, which ends on the working grid).")
@click.option("--correction-steps", type=click.IntRange(min=0), default=8, show_default=True,
              help="Then steps of a displacement correction on that grid, for the detail a smooth velocity cannot "
                   "move (0: none).")
@click.option("--affine-only", is_flag=True, help="Skip the deformable stage.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch CPU threads (default: torch's).")
@click.option("-m", "--model", default=None, type=click.Path(),
              help="Trained model folder: its network starts the deformable stage (instead of -d/-c/-p/-tr).")
@click.option("-d", "--dataset", default=None, help="Dataset id, name or folder of a trained model (with -c/-p/-tr).")
@click.option("-c", "--configuration", default=None, help="Configuration of the model (as nnreg_predict).")
@click.option("-p", "--plans", default="nnRegPlans", show_default=True, help="Plans identifier.")
@click.option("-tr", "--trainer", default="nnRegTrainer", show_default=True, help="Trainer class name.")
@click.option("-f", "--folds", cls=SpaceSeparated, help="Folds to ensemble (default: all present).")
@click.option("-chk", "--checkpoint", default="checkpoint_final.pth", show_default=True, help="Checkpoint file name.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default=None,
              help="Device for the model (default: cuda if available, else cpu).")
@results_option
@verbose_option
@user_errors_as_one_line
def main(fixed: str, moving: str, output: str | None, warped: str | None, field: str | None, transform: str | None,
         moving_labels: str | None, fixed_mask: str | None, moving_mask: str | None, inverse: bool,
         similarity: str | None,
         working_spacing: float, final_spacing: float | None, finer_steps: int, correction_steps: int,
         affine_only: bool, threads: int | None, model: str | None, dataset: str | None,
         configuration: str | None, plans: str, trainer: str, folds: tuple[str, ...], checkpoint: str,
         device: str | None, results: str | None, verbose: bool) -> None:
    """Register MOVING to FIXED: affine (moments, rigid, affine) then deformable (started by a trained model's
    network with -m or -d), outputs on the fixed grid."""
    from nnreg.cli.predict import choose_device, model_folder_from_options, parse_folds
    from nnreg.registration.run import RunRequest, run_registration
    from nnreg.utilities.allocator import keep_freed_memory

    keep_freed_memory()      # 1 mm volumes are allocated dozens of times a step: reuse them, do not fault them in
    folder, chosen = None, "cpu"
    if model is not None or dataset is not None:
        chosen = choose_device(device)[0]
        folder = str(model_folder_from_options(model, dataset, configuration, plans, trainer, results, chosen))

    request = RunRequest(fixed=fixed, moving=moving, output=output, warped=warped, field=field, transform=transform,
                         moving_labels=moving_labels, fixed_mask=fixed_mask, moving_mask=moving_mask, inverse=inverse,
                         similarity=similarity, working_spacing=working_spacing, final_spacing=final_spacing,
                         finer_steps=finer_steps, correction_steps=correction_steps, affine_only=affine_only,
                         threads=threads, model=folder, folds=parse_folds(folds), checkpoint=checkpoint,
                         configuration=configuration, device=chosen)
    for line in run_registration(request):
        click.echo(line)


def entry() -> None:
    """The ``nnreg_register`` console script: :func:`main`, then the process ends without the interpreter's teardown
    (:func:`nnreg.cli.common.run_and_exit`; every output is written and every writer thread joined by then)."""
    run_and_exit(main)


if __name__ == "__main__":
    entry()
