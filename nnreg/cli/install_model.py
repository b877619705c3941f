"""``nnreg_install_pretrained_model_from_zip FILE.zip [--sha256 HEX]``: verify a model zip and install it into
$nnReg_results."""
from __future__ import annotations

import click

from nnreg.cli.common import results_option, user_errors_as_one_line, verbose_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("zip_file", type=click.Path())
@click.option("--sha256", default=None, metavar="HEX",
              help="The zip's SHA-256 as published by its author (e.g. the .sha256 file nnreg_export_model_to_zip "
                   "writes), obtained apart from the zip: checked before anything is unpacked. Only this detects a "
                   "modified zip; the manifest inside the zip detects corruption only.")
@click.option("--overwrite", is_flag=True,
              help="Replace an installed model folder of the same name (the old one is kept, whole, under "
                   "<dataset>/.nnreg_replaced/).")
@results_option
@verbose_option
@user_errors_as_one_line
def main(zip_file: str, sha256: str | None, overwrite: bool, results: str | None, verbose: bool) -> None:
    """Install a model zip written by nnreg_export_model_to_zip. Refuses, before anything lands in $nnReg_results:
    a zip whose SHA-256 differs from --sha256; a corrupt, foreign or malformed zip; unsafe paths; sizes that differ
    from the manifest or do not fit the disk; checksums that differ from the manifest; checkpoints holding anything
    but tensors and plain data."""
    from nnreg.model_sharing import install_model_from_zip
    from nnreg.paths import results_folder

    folders = install_model_from_zip(zip_file, results_folder(results), overwrite=overwrite, sha256=sha256)
    for folder in folders:
        click.echo(f"installed: {folder}")


if __name__ == "__main__":
    main()
