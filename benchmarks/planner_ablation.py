"""Rank CPU planner choices at equal wall time: what the planner's trade order (width vs resolution) is worth.

    python benchmarks/planner_ablation.py --dataset /work/shared/data/OpenBrains80 --minutes 10 \
        --output ablation_out --json planner_ablation.json [--fold 0] [--candidates w8-full w16-full w32-half]

Every candidate is a plan made by the documented CLI (no hand edit), trained for the same ``--minutes`` with
``--time-budget`` and scored the same way, all as subprocesses of the documented commands:

    nnreg_plan_and_preprocess -d ID --device cpu -p PLANS [plan flags] -c CONFIG
    nnreg_train ID FOLD -p PLANS -c CONFIG --device cpu --time-budget M --no-final-validation [train flags]
    nnreg_train ID FOLD -p PLANS -c CONFIG --device cpu --val          (the fold's held-out training images)
    nnreg_predict -i RAW -o OUT/<candidate> -d ID -p PLANS -c CONFIG -f FOLD --device cpu --instance-optimization 0
    nnreg_evaluate -i OUT/<candidate> -d RAW -c EVAL_CONFIG -o OUT/<candidate>/metrics.json

With ``--refined`` each candidate is also predicted with its plans' test-time refinement (``nnreg_predict`` without
``--instance-optimization``, into ``OUT/<candidate>_refined``) and scored the same way (columns ``refined_*``):
refinement works on the configuration's grid, so this is what a resolution trade costs after refinement.
``--reuse-models`` skips planning and training for a candidate whose fold already has ``checkpoint_final.pth`` in
``OUTPUT/work`` (an earlier run of the same command), so a column can be added without retraining.

The **fold** score (Dice/HD95 of the fold's held-out *training* images, ``validation/summary.json``) is what a
choice may be tuned on; the **held-out** score (the dataset's ``validation`` pairs through ``nnreg_evaluate`` with
the official config) is reported next to it. Candidates (:data:`CANDIDATES`; the width a time target gives depends
on the machine's cores, so the table prints what each plan actually is):

* ``w8-full``: the default CPU plan's ``3d_fullres`` (width-first: full resolution, width down to 8);
* ``w12-full`` / ``w16-full``: the same rule with a looser time target (``--cpu-seconds-per-pair 7`` / ``12``);
* ``w32-half``: the default plan's ``3d_halfres`` — width 32 on the grid of twice the spacing, the network that the
  previous resolution-first order gave ``3d_fullres`` (there the finest level was skipped instead);
* ``w8-full-aug``: ``w8-full`` trained with ``--spatial-augmentation`` (the augmentation measured on/off).

The dataset folder is linked into ``OUTPUT/work/raw``, never copied or modified. Prints a table, writes ``--json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks.planner_ablation")

BENCH_ID = 991                       # id given to a dataset folder not named DatasetXXX_Name


@dataclass(frozen=True)
class Candidate:
    """One planner choice: the plans it is made with, the configuration trained, extra training flags."""

    plans: str
    plan_flags: tuple[str, ...]
    configuration: str
    train_flags: tuple[str, ...] = ()


CANDIDATES = {
    "w8-full": Candidate("AblationCPU", (), "3d_fullres"),
    "w12-full": Candidate("AblationCPU7", ("--cpu-seconds-per-pair", "7"), "3d_fullres"),
    "w16-full": Candidate("AblationCPU12", ("--cpu-seconds-per-pair", "12"), "3d_fullres"),
    "w32-half": Candidate("AblationCPU", (), "3d_halfres"),
    # its own plans name: the same plan, but a model folder (and --reuse-models check) apart from w8-full's
    "w8-full-aug": Candidate("AblationCPUAug", (), "3d_fullres", ("--spatial-augmentation",)),
}
DEFAULT_CANDIDATES = ("w8-full", "w16-full", "w32-half")


def link_dataset(dataset: Path, raw: Path) -> tuple[int, Path]:
    """``raw/DatasetXXX_Name`` -> ``dataset`` (a symlink; the dataset's own id when it is named like one)."""
    match = re.match(r"Dataset(\d+)_", dataset.name)
    link = raw / (dataset.name if match else f"Dataset{BENCH_ID}_{dataset.name}")
    raw.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(dataset.resolve(), target_is_directory=True)
    return (int(match.group(1)) if match else BENCH_ID), link


def default_eval_config(dataset: Path) -> Path | None:
    """The dataset's official 'All' evaluation config when it ships one."""
    found = sorted(dataset.glob("*_All_evaluation_config.json"))
    return found[0] if found else None


def run(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a documented command, output appended to ``log``; returns its seconds; a failure stops the script."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"planner_ablation: `{' '.join(command)}` failed with exit code {code} (see {log})")
    return time.perf_counter() - start


def plan_summary(preprocessed: Path, plans: str, configuration: str) -> dict[str, Any]:
    """Width, kernel, skipped levels and the grid the field is estimated on, from the plans file."""
    plans_file = next(preprocessed.glob(f"*/{plans}.json"))
    config = json.loads(plans_file.read_text())["configurations"][configuration]
    kw = config["architecture"]["kwargs"]
    skip = int(kw.get("skip_levels", 0) or 0)
    return {"width": kw["base_channels"], "kernel": kw["kernel_size"], "skip_levels": skip,
            "field_spacing_mm": [s * 2 ** skip for s in config["spacing"]],
            "why": config.get("notes", {}).get("why", "")}


def fold_scores(fold_folder: Path) -> dict[str, Any]:
    """Schedule and final-validation means of a trained fold."""
    import torch

    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    hp = checkpoint["init_args"]["hyperparameters"]
    summary = json.loads((fold_folder / "validation" / "summary.json").read_text())
    mean = summary["fold_pairs"]["mean"]
    return {"epochs": hp["epochs"], "iterations_per_epoch": hp["iterations_per_epoch"],
            "fold_pairs": summary["fold_pairs"]["num_pairs"], "fold_dice": mean.get("dice"),
            "fold_hd95": mean.get("hd95"), "fold_ndv": mean.get("ndv")}


def held_out_scores(metrics: Path, prefix: str = "held_out_") -> dict[str, Any]:
    """Official aggregate means of ``nnreg_evaluate``'s metrics.json, keyed by ``prefix`` + lower-case metric name."""
    aggregates = json.loads(metrics.read_text())["aggregates"]
    return {f"{prefix}{name.lower().replace(' ', '_')}": values["mean"] for name, values in aggregates.items()}


def format_table(rows: list[dict[str, Any]]) -> str:
    """One row per candidate: what the plan is, the schedule the budget gave, fold and held-out scores."""
    held = [k for prefix in ("held_out_", "refined_") for k in sorted({k for r in rows for k in r
                                                                        if k.startswith(prefix)})]
    header = ["candidate", "width", "K", "field mm", "epochs x it", "fold Dice", "fold HD95"] + \
        [k.replace("held_out_", "") for k in held]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [header]
    for r in rows:
        lines.append([r["candidate"], cell(r["width"]), cell(r["kernel"]), "x".join(f"{s:g}" for s in
                                                                                  r["field_spacing_mm"]),
                      f"{r['epochs']} x {r['iterations_per_epoch']}", cell(r["fold_dice"]), cell(r["fold_hd95"])]
                     + [cell(r.get(k)) for k in held])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="Learn2Reg dataset folder (with labels).")
    parser.add_argument("--minutes", type=float, required=True, help="Training wall time of every candidate.")
    parser.add_argument("--output", type=Path, required=True, help="Work and output folder.")
    parser.add_argument("--json", type=Path, default=None, help="Write the rows here.")
    parser.add_argument("--fold", default="0", help="Fold to train (default 0: scored on its held-out images).")
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(DEFAULT_CANDIDATES),
                        help=f"Candidates to run (default: {' '.join(DEFAULT_CANDIDATES)}).")
    parser.add_argument("--eval-config", type=Path, default=None,
                        help="Official evaluation config (default: the dataset's *_All_evaluation_config.json).")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="Preprocessing processes.")
    parser.add_argument("--refined", action="store_true",
                        help="Also predict and score with the plans' test-time refinement (OUT/<candidate>_refined).")
    parser.add_argument("--reuse-models", action="store_true",
                        help="Skip planning and training where the candidate's fold already has a final checkpoint.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = args.output / "work"
    work.mkdir(parents=True, exist_ok=True)
    dataset_id, raw_dataset = link_dataset(args.dataset, work / "raw")
    env = dict(os.environ, nnReg_raw=str(work / "raw"), nnReg_preprocessed=str(work / "preprocessed"),
               nnReg_results=str(work / "results"))
    eval_config = args.eval_config or default_eval_config(args.dataset)
    log = args.output / "commands.log"
    rows = []
    for name in args.candidates:
        cand = CANDIDATES[name]
        d = str(dataset_id)
        logger.info("candidate %s: plans %s %s, %s", name, cand.plans, " ".join(cand.plan_flags) or "(defaults)",
                    cand.configuration)
        fold = (work / "results" / raw_dataset.name / f"nnRegTrainer__{cand.plans}__{cand.configuration}"
                / f"fold_{args.fold}")
        common = [d, args.fold, "-p", cand.plans, "-c", cand.configuration, "--device", "cpu"]
        train_seconds: float | None = None
        if args.reuse_models and (fold / "checkpoint_final.pth").is_file():
            logger.info("candidate %s: reusing the trained fold in %s", name, fold)
        else:
            run(["nnreg_plan_and_preprocess", "-d", d, "--device", "cpu", "-p", cand.plans, "-c", cand.configuration,
                 "-np", str(args.num_processes), *cand.plan_flags], log, env)
            train_seconds = run(["nnreg_train", *common, "--time-budget", f"{args.minutes:g}",
                                 "--no-final-validation", *cand.train_flags], log, env)
            run(["nnreg_train", *common, "--val"], log, env)
        predict = ["nnreg_predict", "-i", str(raw_dataset), "-d", d, "-p", cand.plans, "-c", cand.configuration,
                   "-f", args.fold, "--device", "cpu", "--disable-progress-bar"]
        variants = [(args.output / name, ["--instance-optimization", "0"], "held_out_")]
        if args.refined:
            variants.append((args.output / f"{name}_refined", [], "refined_"))
        scores: dict[str, Any] = {}
        for out, flags, prefix in variants:
            seconds = run([*predict, "-o", str(out), *flags], log, env)
            evaluate = ["nnreg_evaluate", "-i", str(out), "-d", str(raw_dataset), "-o", str(out / "metrics.json")]
            run(evaluate + (["-c", str(eval_config)] if eval_config else []), log, env)
            scores.update(held_out_scores(out / "metrics.json", prefix))
            scores[f"{prefix}predict_seconds"] = round(seconds, 1)
        row = {"candidate": name, "plans": cand.plans, "plan_flags": list(cand.plan_flags),
               "configuration": cand.configuration, "train_flags": list(cand.train_flags),
               **plan_summary(work / "preprocessed", cand.plans, cand.configuration), **fold_scores(fold),
               **scores, "train_minutes_budget": args.minutes,
               "train_wall_minutes": None if train_seconds is None else round(train_seconds / 60, 2)}
        rows.append(row)
        logger.info("candidate %s done: %s", name, {k: row[k] for k in ("width", "epochs", "fold_dice")})
    print(format_table(rows))  # noqa: T201 - a benchmark's table is its output
    if args.json:
        args.json.write_text(json.dumps({"dataset": str(args.dataset), "fold": args.fold, "minutes": args.minutes,
                                         "eval_config": str(eval_config) if eval_config else None,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
