"""Run the whole pipeline on the built-in example, exactly as a user would: each step is the user-facing
command, printed before it runs, with the nnReg_* folders set inside the example's output folder.

Steps: build the dataset (MNI152 template subjects) -> nnreg_plan_and_preprocess -> nnreg_train (a short CPU
training of the half-resolution configuration) -> nnreg_predict (with QC images) -> nnreg_evaluate
(with the zero-displacement baseline) -> a before/after summary.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import read_json

logger = logging.getLogger(__name__)

DATASET = "Dataset999_MNIExample"
SUMMARY_METRICS = (("DSC", "Dice", "higher"), ("HD95", "HD95", "lower"), ("TRE_lm", "TRE", "lower"),
                   ("Non-diffeomorphic Volumes", "NDV %", "lower"))


@dataclass
class ExampleOptions:
    """Sizes of the example run; the defaults take about 6 minutes on 2 idle CPU cores."""

    output: Path
    n_train: int = 12
    n_val: int = 4
    epochs: int = 15
    iterations_per_epoch: int = 40
    configuration: str = "3d_halfres"
    cpu_seconds_per_pair: float = 1.0   # the planner's CPU time target: a small network for a 10-minute example
    seed: int = 0


def _command(name: str) -> list[str]:
    """The console script if installed, else the same command through this interpreter."""
    exe = shutil.which(name)
    if exe:
        return [exe]
    module = {"nnreg_plan_and_preprocess": "plan_and_preprocess", "nnreg_train": "train",
              "nnreg_predict": "predict", "nnreg_evaluate": "evaluate"}[name]
    return [sys.executable, "-c", f"from nnreg.cli.{module} import main; main()"]


def _run(name: str, args: list[str], env: dict[str, str]) -> None:
    logger.info("\n$ %s %s", name, " ".join(shlex.quote(a) for a in args))
    started = time.monotonic()
    done = subprocess.run(_command(name) + args, env=env)
    if done.returncode != 0:
        raise NnregError(f"{name} failed with exit code {done.returncode} (its message is above)")
    logger.info("(%s took %.0f s)", name, time.monotonic() - started)


def summary_table(after: dict, before: dict) -> str:
    """Before/after aggregate means of the example's metrics."""
    rows = [f"{'metric':<8}{'before':>10}{'after':>10}   better"]
    for key, label, direction in SUMMARY_METRICS:
        if key in after.get("aggregates", {}):
            b = before["aggregates"][key]["mean"]
            a = after["aggregates"][key]["mean"]
            rows.append(f"{label:<8}{b:>10.4f}{a:>10.4f}   {direction}")
    return "\n".join(rows)


def run_example(options: ExampleOptions) -> dict:
    """Build, plan, train, predict and evaluate; return the metrics (``after``/``before`` official dicts)."""
    from nnreg.example.builder import build_example_dataset

    out = options.output.absolute()
    raw = out / "nnReg_raw" / DATASET
    env = {**os.environ, "nnReg_raw": str(out / "nnReg_raw"), "nnReg_preprocessed": str(out / "nnReg_preprocessed"),
           "nnReg_results": str(out / "nnReg_results")}
    started = time.monotonic()
    if not (raw / "dataset.json").is_file():
        logger.info("building the example dataset in %s (MNI152 template subjects)", raw)
        build_example_dataset(raw, n_train=options.n_train, n_val=options.n_val, seed=options.seed)
    _run("nnreg_plan_and_preprocess", ["-d", "999", "-c", options.configuration, "--device", "cpu",
                                       "--cpu-seconds-per-pair", str(options.cpu_seconds_per_pair)], env)
    _run("nnreg_train", ["999", "all", "-c", options.configuration, "--device", "cpu",
                         "--epochs", str(options.epochs), "--iterations-per-epoch", str(options.iterations_per_epoch),
                         "--seed", str(options.seed)], env)
    predictions = out / "predictions"
    _run("nnreg_predict", ["-i", str(raw), "-o", str(predictions), "-d", "999", "-c", options.configuration,
                           "-f", "all", "--device", "cpu", "--qc", "--continue"], env)
    metrics = out / "metrics.json"
    _run("nnreg_evaluate", ["-i", str(predictions), "-d", str(raw), "-o", str(metrics), "--baseline-zero"], env)
    after = read_json(metrics)
    before = read_json(metrics.with_name("metrics_zero_displacement.json"))
    logger.info("\nnnreg example: %d held-out pairs, before (zero displacement) vs after registration\n%s",
                len(after["cases"]), summary_table(after, before))
    qc = sorted(predictions.glob("**/*.png"))
    logger.info("QC images (%d): %s%s", len(qc), ", ".join(str(p) for p in qc[:3]), " ..." if len(qc) > 3 else "")
    logger.info("finished in %.1f min; everything is in %s", (time.monotonic() - started) / 60, out)
    return {"after": after, "before": before}
