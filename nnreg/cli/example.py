"""``nnreg_example``: the whole pipeline on a small dataset made from the MNI152 template (about 6 minutes
on 2 CPU cores; nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import click

from nnreg.cli.common import user_errors_as_one_line, verbose_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("nnreg_example"),
              show_default=True, help="Folder for the example's data, model, predictions and metrics.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True, help="Training epochs.")
@click.option("--iterations-per-epoch", type=click.IntRange(min=1), default=40, show_default=True,
              help="Training steps per epoch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic subjects and training.")
@verbose_option
@user_errors_as_one_line
def main(output: Path, epochs: int, iterations_per_epoch: int, seed: int, verbose: bool) -> None:
    """Build an example dataset from nilearn's MNI152 template, then plan, train, predict and evaluate."""
    try:
        import nilearn  # noqa: F401
    except ImportError:
        raise click.ClickException("the example needs nilearn: pip install -e '.[example]'") from None
    from nnreg.example.run import ExampleOptions, run_example

    run_example(ExampleOptions(output=output, epochs=epochs, iterations_per_epoch=iterations_per_epoch, seed=seed))
