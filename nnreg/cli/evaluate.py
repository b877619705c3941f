"""``nnreg_evaluate``: the Learn2Reg/LUMIR metrics of a folder of displacement fields.

Examples::

    nnreg_evaluate -i preds/ -d OpenBrains80 -c OBR80_VAL_All_evaluation_config.json -o metrics.json
    nnreg_evaluate -i preds/ -d LUMIR -c Landmark_config.json -c Segmentation_config.json --mask fixed
    nnreg_evaluate -i preds/ -d OpenBrains80 --baseline-zero      # dataset.json validation pairs, no config
    nnreg_evaluate -i part/ -d OpenBrains80 -c OBR80_VAL_All_evaluation_config.json --only-present   # fields so far
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from nnreg.cli.common import SpaceSeparated, raw_option, user_errors_as_one_line, verbose_option
from nnreg.utilities.errors import NnregError

logger = logging.getLogger("nnreg")


def check_metrics_output(output: Path, root: Path, configs: list[Path], baseline_zero: bool) -> None:
    """``-o`` names a new or earlier metrics ``.json`` outside the raw dataset (never a field, a label map, a config
    or dataset.json), in a folder that can be written: one line before the evaluation otherwise."""
    from nnreg.utilities.files import check_output_targets

    if not output.name.endswith(".json"):
        raise NnregError("-o must name the metrics .json file to write", output)
    targets = [("-o", output)]
    if baseline_zero:
        targets.append(("the zero-displacement metrics", output.with_name(f"{output.stem}_zero_displacement.json")))
    raw, inputs = root.resolve(), {path.resolve() for path in configs}
    for _, target in targets:
        resolved = target.resolve()
        if resolved in inputs or resolved == raw or raw in resolved.parents:
            raise NnregError("refusing to write metrics into the raw dataset or over an evaluation config; choose "
                             "another -o", target)
    check_output_targets(targets)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-i", "--input", "disp_dir", required=True, type=click.Path(path_type=Path),
              help="Folder with disp_<fix>_<mov>.nii.gz displacement fields (voxels, pull, (H,W,D,3)).")
@click.option("-d", "--data", "--dataset", "dataset", required=True,
              help="Ground truth: dataset id (500) or name (in $nnReg_raw / --raw) or a dataset folder path "
                   "(images*/, labels*/, landmarks*/).")
@click.option("-c", "--config", "configs", cls=SpaceSeparated, type=click.Path(path_type=Path),
              help="Official evaluation config JSON; several combine (-c A.json B.json; metrics of a shared pair are "
                   "merged). A relative path is looked up in the current folder, then in the dataset folder. "
                   "Without it: the dataset.json validation pairs and every metric the ground truth allows.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=None,
              help="Write metrics.json (official structure) here.")
@click.option("--baseline-zero", is_flag=True, help="Also evaluate a zero field; show before -> after (with -o, also written to <name>_zero_displacement.json).")
@click.option("--mask", "ndv_mask", type=click.Choice(["moving", "fixed"]), default=None,
              help="NDV mask: moving image > 0 (LUMIR 2024, the default) or fixed image > 0 (LUMIR 2025, the "
                   "default with --lumir25).")
@click.option("--lumir25", is_flag=True,
              help="LUMIR 2025's evaluation: NDV masked by the fixed image, TRE robustness at the 70th percentile, "
                   "per-set Dice (ID_dice, OOD_dice, MM_dice from the configs' names), eval_version 3.0.")
@click.option("--only-present", is_flag=True,
              help="Evaluate the pairs whose field is in the folder (a run split over processes, or still going); "
                   "one warning counts the others (the first three named) and metrics.json's missing_cases lists "
                   "them all; without it a missing field is an error.")
@raw_option
@verbose_option
@user_errors_as_one_line
def main(disp_dir: Path, dataset: str, configs: tuple[Path, ...], output: Path | None, baseline_zero: bool,
         ndv_mask: str | None, lumir25: bool, only_present: bool, raw: str | None, verbose: bool) -> None:
    """Evaluate displacement fields with the Learn2Reg/LUMIR metrics (Dice, HD95, TRE, NDV, SDlogJ)."""
    from nnreg.dataset.learn2reg import load_dataset
    from nnreg.dataset.locate import find_raw_dataset
    from nnreg.evaluation.config import EvalPair, load_config, locate_config
    from nnreg.evaluation.report import format_table
    from nnreg.evaluation.runner import EvaluationResult, dataset_config, evaluate_folder, find_displacement, \
        write_metrics

    root = find_raw_dataset(dataset, raw)
    if not disp_dir.is_dir():
        raise NnregError("displacement folder does not exist", disp_dir)
    located = [locate_config(path, root) for path in configs]
    if output is not None:
        check_metrics_output(output, root, [path for path, _ in located], baseline_zero)
    parsed = [load_config(path) for path, _ in located]
    pairs = [pair for config in parsed for pair in config.pairs] if configs else \
        [EvalPair(p.fixed.relative, p.moving.relative) for p in load_dataset(root, training_files=False).validation]
    if not only_present:
        for pair in pairs:   # every input checked before anything is said: an input error is the only line
            find_displacement(disp_dir, pair)
    for _, note in located:
        logger.info(note)
    if not configs:
        parsed = [dataset_config(root)]
    protocol = "lumir25" if lumir25 else "lumir24"
    ndv_mask = ndv_mask or ("fixed" if lumir25 else "moving")
    result = evaluate_folder(disp_dir, root, parsed, ndv_mask=ndv_mask, baseline_zero=baseline_zero,
                             protocol=protocol, only_present=only_present)
    click.echo(format_table(result))
    if output is not None:
        write_metrics(result, output)
        logger.info("wrote %s", output)
        if result.baseline is not None:
            zero = Path(output).with_name(f"{Path(output).stem}_zero_displacement.json")
            write_metrics(EvaluationResult(f"{result.name} (zero displacement)", result.baseline, None,
                                           result.protocol, result.sets, result.missing), zero)
            logger.info("wrote %s (the zero-displacement baseline, same structure)", zero)
