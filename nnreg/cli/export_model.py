"""``nnreg_export_model_to_zip -d D -c C -f F... -o FILE.zip``: pack trained model folders for sharing."""
from __future__ import annotations

import click

from nnreg.cli.common import SpaceSeparated, results_option, split_values, user_errors_as_one_line, verbose_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-d", "--dataset", required=True, help="Dataset id or name of the trained model.")
@click.option("-c", "--configuration", "configurations", cls=SpaceSeparated,
              help="Configuration(s): -c 3d_fullres 3d_halfres (default 3d_fullres).")
@click.option("-f", "--folds", cls=SpaceSeparated, help="Folds to include: -f 0 1 2 (default: every trained fold).")
@click.option("-o", "--output", required=True, type=click.Path(), help="The .zip file to write.")
@click.option("-p", "--plans", default="nnRegPlans", show_default=True, help="Plans identifier.")
@click.option("-tr", "--trainer", default="nnRegTrainer", show_default=True, help="Trainer class name.")
@click.option("-chk", "--checkpoint", "checkpoints", cls=SpaceSeparated,
              help="Checkpoint file(s) per fold (default checkpoint_final.pth).")
@results_option
@verbose_option
@user_errors_as_one_line
def main(dataset: str, configurations: tuple[str, ...], folds: tuple[str, ...], output: str, plans: str,
         trainer: str, checkpoints: tuple[str, ...], results: str | None, verbose: bool) -> None:
    """Write a model zip (plans, dataset.json, fingerprint, checkpoints, checksum manifest) that
    nnreg_install_pretrained_model_from_zip installs, and its SHA-256 beside it (FILE.zip.sha256, sha256sum
    format) to publish apart from the zip."""
    from nnreg.model_sharing import export_model_to_zip
    from nnreg.paths import results_folder

    exported = export_model_to_zip(dataset, split_values(configurations) or ["3d_fullres"], output,
                                   results_folder(results), split_values(folds) or None, trainer, plans,
                                   split_values(checkpoints) or ["checkpoint_final.pth"])
    listed = "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in exported.folds.items())
    click.echo(f"done: {exported.dataset_name} {listed} -> {exported.path}")
    click.echo(f"SHA-256 {exported.sha256} (also in {exported.path.name}.sha256): publish it apart from the zip, "
               f"so that users can check what they downloaded with\n  nnreg_install_pretrained_model_from_zip "
               f"{exported.path.name} --sha256 {exported.sha256}")


if __name__ == "__main__":
    main()
