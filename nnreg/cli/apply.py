"""``nnreg_apply -f FIELD -i INPUT [INPUT ...] -r FIXED -o OUT``: warp images or label maps by a saved field."""
from __future__ import annotations

import click

from nnreg.cli.common import SpaceSeparated, user_errors_as_one_line, verbose_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--field", "field", required=True, type=click.Path(),
              help="Displacement field: nnreg's challenge field disp_<fix>_<mov>.nii.gz or its ITK field itk/disp_*.")
@click.option("-i", "--input", "inputs", cls=SpaceSeparated, required=True,
              help="Image(s) or label map(s) on the moving image's grid (or any grid aligned with it): -i A B C.")
@click.option("-r", "--reference", "fixed", required=True, type=click.Path(),
              help="The fixed image: the output grid and geometry.")
@click.option("-o", "--output", "output", required=True, type=click.Path(),
              help="Output file for one input (.nii.gz), a folder for several (outputs keep the input names).")
@click.option("--interpolation", type=click.Choice(["linear", "bspline", "nearest"]), default=None,
              help="Default: nearest for integer-typed images (label maps), linear otherwise.")
@verbose_option
@user_errors_as_one_line
def main(field: str, inputs: tuple[str, ...], fixed: str, output: str, interpolation: str | None,
         verbose: bool) -> None:
    """Warp images or label maps onto the fixed image's grid with a field written by nnreg_predict."""
    from nnreg.inference.apply import apply_field

    written = apply_field(field, list(inputs), fixed, output, interpolation)
    click.echo(f"done: {len(written)} image(s) written -> {output}")


if __name__ == "__main__":
    main()
