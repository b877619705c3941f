"""``nnreg_install_pretrained_model_from_zip FILE.zip``: verify a model zip and install it into $nnReg_results."""
from __future__ import annotations

import click

from nnreg.cli.common import results_option, user_errors_as_one_line, verbose_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("zip_file", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace an installed model folder of the same name.")
@results_option
@verbose_option
@user_errors_as_one_line
def main(zip_file: str, overwrite: bool, results: str | None, verbose: bool) -> None:
    """Install a model zip written by nnreg_export_model_to_zip (checksums verified; refuses corrupt, foreign or
    unsafe zips)."""
    from nnreg.model_sharing import install_model_from_zip
    from nnreg.paths import results_folder

    folders = install_model_from_zip(zip_file, results_folder(results), overwrite=overwrite)
    for folder in folders:
        click.echo(f"installed: {folder}")


if __name__ == "__main__":
    main()
