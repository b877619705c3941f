"""Accuracy benchmark: the documented CPU recipe against the strongest fast registration tools, same pairs, same run,
same metrics, with seeds and paired intervals.

    pip install -e '.[bench]'        # Greedy, ConvexAdam, ANTs (a missing one is a table row, not a crash)
    python benchmarks/accuracy.py --dataset ../shared/data/OpenBrains80 --train-minutes 30 --seeds 2 \\
        --anchor-cache anchor_cache --output acc --json acc.json
    python benchmarks/accuracy.py --dataset ../shared/data/OpenBrains80 --train-minutes 0 --methods zero \\
        --anchors all --anchor-cache anchor_cache --output anchors80 --json anchors80.json   # anchors only

On a Learn2Reg dataset with labels it runs, as subprocesses of the documented commands:

1. ``nnreg_plan_and_preprocess -d ID --device cpu`` once, then for each of ``--seeds N`` seeds (12345, 12346, ...;
   the first is ``nnreg_train``'s default) ``nnreg_train ID all -c CONFIGURATION --device cpu --seed S
   --time-budget M`` (the training images only; ``--epochs`` when this nnreg has no ``--time-budget``);
2. per seed, ``nnreg_predict`` on the ``validation`` pairs without refinement (``--instance-optimization 0``, method
   ``nnreg``) and with it (the plans' default or ``--instance-optimization N`` / ``--instance-optimization-settings``
   / ``--finer-grid-settings``; method ``nnreg_refined``); once, with the first seed's plans, the same refinement
   from the identity without the network (``--start identity``, method ``nnreg_identity``, kind ``ablation``: what
   the network's start adds);
3. the anchors of ``--anchors`` (default all; benchmarks/anchors.py: SimpleITK demons, Greedy with and without
   ``-sv``, ConvexAdam with its defaults and the LUMIR brain settings, ANTs SyNQuick and the LUMIR SyN call), each
   through its Python package with its documented settings; the ANTs fields (minutes per pair) are cached in
   ``--anchor-cache DIR``, keyed by the pair's image contents and the settings, and reused with the seconds recorded
   when they were computed;
4. the zero field (method ``zero``), and ``nnreg_evaluate -c CONFIG`` (the dataset's ``*_All_*`` config unless
   ``--config``) for every row.

Fields go to ``OUTDIR/<method>[_seed<S>]/disp_<fix>_<mov>.nii.gz`` (voxel-unit pull fields on the fixed grid), metrics
to ``metrics.json`` beside them; the models, plans and logs to ``OUTDIR/work/``. Printed and in ``--json``: every row
(``method, label, kind, seed, status, dice, hd95, tre, ndv`` (official NDV %), ``seconds_per_pair`` (files to written
fields / pairs; nnreg: the whole ``nnreg_predict`` process), ``train_minutes``, ``per_pair_dice``), the mean ± std
(min–max) over seeds per nnreg method (``summary``), and for every anchor (and the ``nnreg_identity`` ablation) the
per-pair Dice of nnreg_refined (nnreg without it) minus the anchor's with a 10,000-resample bootstrap 95 % interval
over pairs (``differences``).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: benchmarks/ is importable

from benchmarks import accuracy_report as report  # noqa: E402
from benchmarks import anchors  # noqa: E402

logger = logging.getLogger("nnreg.benchmarks.accuracy")

BENCH_ID = 990                      # id given to a dataset folder not named DatasetXXX_Name
DEFAULT_SEED = 12345                # nnreg_train's default --seed: the first seed keeps the single-seed folders
NNREG_METHODS = ("nnreg", "nnreg_refined", "nnreg_identity")
LABELS = {"nnreg": "nnreg", "nnreg_refined": "nnreg + refinement",
          "nnreg_identity": "refinement from the identity (no network)"}
ROW_KEYS = ("method", "label", "kind", "seed", "status", "dice", "hd95", "tre", "ndv", "seconds_per_pair",
            "train_minutes", "cached_pairs", "per_pair_dice")


# -- dataset -------------------------------------------------------------------------------------------------
def link_dataset(dataset: Path, raw: Path) -> tuple[int, Path]:
    """``raw/DatasetXXX_Name`` -> ``dataset`` (a symlink; raw data are never copied or modified); (id, link)."""
    match = re.match(r"^Dataset(\d{3})_", dataset.name)
    name = dataset.name if match else f"Dataset{BENCH_ID}_{dataset.name}"
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / name
    if link.is_symlink() or link.exists():
        if link.resolve() != dataset.resolve():
            raise SystemExit(f"{link} exists and points elsewhere; use another --output")
    else:
        link.symlink_to(dataset.resolve(), target_is_directory=True)
    return (int(match.group(1)) if match else BENCH_ID), link


def validation_pairs(dataset: Path) -> list[tuple[Path, Path]]:
    """(fixed, moving) image paths of ``dataset.json``'s ``validation`` list."""
    from nnreg.inference.pairs import collect_pairs

    return [(Path(p.fixed), Path(p.moving)) for p in collect_pairs(str(dataset), "validation", None, None)]


def default_config(dataset: Path) -> Path | None:
    """The dataset's official evaluation config with every metric (``*_All_evaluation_config.json``)."""
    hits = sorted(dataset.glob("*_All_evaluation_config.json"))
    return hits[0] if hits else None


# -- subprocesses ----------------------------------------------------------------------------------------------
def run(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a command with its output appended to ``log``; its wall seconds. A failure stops the benchmark."""
    logger.info("$ %s", " ".join(command))
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{command[0]} failed (exit {code}); see {log}")
    return seconds


def train_arguments(minutes: float, env: dict[str, str]) -> list[str]:
    """``--time-budget M`` when ``nnreg_train`` has it, else epochs of 20 iterations sized from M (~1 epoch/min)."""
    helptext = subprocess.run(["nnreg_train", "--help"], capture_output=True, text=True, env=env).stdout
    if "--time-budget" in helptext:
        return ["--time-budget", f"{minutes:g}"]
    return ["--epochs", str(max(1, round(minutes))), "--iterations-per-epoch", "20"]


def seed_suffix(seed: int) -> str:
    """Folder suffix of a seed's model, fields and train minutes: none for the default seed (single-seed layout)."""
    return "" if seed == DEFAULT_SEED else f"_seed{seed}"


# -- the rows ----------------------------------------------------------------------------------------------------
def nnreg_rows(args: argparse.Namespace, methods: list[str], seeds: list[int], dataset: Path, dataset_id: int,
               pairs: int, out: Path, env: dict[str, str], log: Path) -> list[dict[str, Any]]:
    """Plan once, then per seed train (or reuse with ``--skip-training``) and predict without / with refinement."""
    from nnreg.utilities.files import read_json, write_json

    work = out / "work"
    if not args.skip_training:
        run(["nnreg_plan_and_preprocess", "-d", str(dataset_id), "--device", "cpu"], log, env)
    rows = []
    for seed in seeds:
        suffix = seed_suffix(seed)
        seed_env = dict(env, nnReg_results=str(work / f"results{suffix}"))
        minutes_file = work / f"train_minutes{suffix}.json"
        if not args.skip_training:
            start = time.perf_counter()
            run(["nnreg_train", str(dataset_id), "all", "-c", args.configuration, "--device", "cpu", "--seed",
                 str(seed), *train_arguments(args.train_minutes, seed_env)], log, seed_env)
            train_minutes = (time.perf_counter() - start) / 60
            write_json({"train_minutes": train_minutes, "seed": seed}, minutes_file)
        else:   # the measured minutes of the run that trained the model (the given budget if not recorded)
            train_minutes = read_json(minutes_file)["train_minutes"] if minutes_file.is_file() else args.train_minutes
        for method in (m for m in NNREG_METHODS if m in methods):
            identity = method == "nnreg_identity"
            if identity and seed != seeds[0]:      # no network: one run, whatever the seed's weights
                continue
            refinement = ["--instance-optimization", "0"] if method == "nnreg" else (
                [] if args.instance_optimization is None else ["--instance-optimization", str(args.instance_optimization)])
            if method != "nnreg" and args.instance_optimization_settings:
                refinement += ["--instance-optimization-settings", args.instance_optimization_settings]
            if method != "nnreg" and args.finer_grid_settings:
                refinement += ["--finer-grid-settings", args.finer_grid_settings]
            if identity:
                refinement += ["--start", "identity"]
            folder = out / (method if identity else f"{method}{suffix}")
            seconds = run(["nnreg_predict", "-i", str(dataset), "-o", str(folder), "-d", str(dataset_id),
                           "-c", args.configuration, "--device", "cpu", *refinement], log, seed_env)
            rows.append({"method": method, "label": LABELS[method], "kind": "ablation" if identity else "nnreg",
                         "seed": None if identity else seed, "status": "ok", "folder": folder,
                         "seconds_per_pair": seconds / max(1, pairs),
                         "train_minutes": None if identity else train_minutes})
    return rows


def anchor_rows(names: list[str], pairs: list[tuple[Path, Path]], out: Path, cache: Path | None,
                log: Path) -> list[dict[str, Any]]:
    """Each anchor on every pair (its fields in ``out/<name>``), or a "not installed" row when its package is not."""
    rows = []
    for name in names:
        anchor = anchors.ANCHORS[name]
        row: dict[str, Any] = {"method": name, "label": anchor.label, "kind": "anchor", "seed": None}
        if not anchor.available():
            rows.append({**row, "status": f"not installed (pip install {anchor.distribution})"})
            logger.warning("%s: %s is not installed; its row says so", name, anchor.distribution)
            continue
        seconds, cached = [], 0
        for k, (fixed, moving) in enumerate(pairs):
            pair_seconds, hit = anchors.register_pair(anchor, fixed, moving, out / name, cache, log)
            seconds.append(pair_seconds)
            cached += hit
            logger.info("%s: pair %d/%d %s (%.1f s)", name, k + 1, len(pairs), "from the cache" if hit else "done",
                        pair_seconds)
        rows.append({**row, "status": "ok", "folder": out / name, "seconds_per_pair": float(np.mean(seconds)),
                     "cached_pairs": cached, "version": anchor.version(), "settings": anchor.settings})
    return rows


def zero_row(pairs: list[tuple[Path, Path]], out: Path) -> dict[str, Any]:
    """The zero field for every pair (timed like the anchors: image header to written field)."""
    from nnreg.dataset.image_io import read_image, write_displacement
    from nnreg.inference.export import pair_outputs

    start = time.perf_counter()
    for fixed, moving in pairs:
        geometry = read_image(fixed)[1]
        write_displacement(np.zeros((*geometry.shape, 3), np.float32), pair_outputs(out, fixed, moving).displacement,
                           geometry)
    return {"method": "zero", "label": "zero displacement", "kind": "zero", "seed": None, "status": "ok",
            "folder": out, "seconds_per_pair": (time.perf_counter() - start) / max(1, len(pairs))}


def choose(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(nnreg/zero methods, anchor names): ``--methods`` may also name anchors (older commands); ``--anchors`` wins."""
    named = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in named if m not in (*NNREG_METHODS, "zero") and m not in anchors.ANCHORS]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}")
    in_methods = [m for m in named if m in anchors.ANCHORS]
    chosen = args.anchors if args.anchors is not None else (",".join(in_methods) if in_methods else "all")
    return [m for m in named if m not in anchors.ANCHORS], anchors.parse_anchors(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="Learn2Reg dataset folder with labels")
    parser.add_argument("--train-minutes", type=float, required=True, help="nnreg_train --time-budget (minutes)")
    parser.add_argument("--output", type=Path, required=True, help="folder for OUTDIR/<method>/ fields and work/")
    parser.add_argument("--json", type=Path, required=True, help="write the result rows here")
    parser.add_argument("--config", type=Path, default=None,
                        help="evaluation config (default: the dataset's *_All_evaluation_config.json)")
    parser.add_argument("--instance-optimization", type=int, default=None,
                        help="refinement steps of the nnreg_refined row (default: the plans' setting)")
    parser.add_argument("--instance-optimization-settings", default=None, metavar="KEY=VALUE,...",
                        help="nnreg_predict --instance-optimization-settings of the nnreg_refined row")
    parser.add_argument("--finer-grid-settings", default=None, metavar="KEY=VALUE,...",
                        help="nnreg_predict --finer-grid-settings of the nnreg_refined row (the finer-grid stage of a "
                             "3d_halfres model of 1 mm data)")
    parser.add_argument("--configuration", default="3d_fullres",
                        help="nnreg configuration to train and predict with (e.g. 3d_halfres for 1 mm data on a CPU)")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the models already trained in OUTDIR/work (their measured train minutes are "
                             "reported when those runs recorded them, else --train-minutes)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="independent nnreg trainings (nnreg_train --seed 12345, 12346, ...); rows per seed and "
                             "their mean ± std (min–max)")
    parser.add_argument("--methods", default="nnreg,nnreg_refined,nnreg_identity,zero",
                        help="comma-separated subset of nnreg, nnreg_refined, nnreg_identity (the refinement from "
                             "the identity, no network), zero (anchor names are accepted too and select those "
                             "anchors when --anchors is not given)")
    parser.add_argument("--anchors", default=None,
                        help=f"all (default), none, or comma-separated: {', '.join(anchors.ANCHORS)}")
    parser.add_argument("--anchor-cache", type=Path, default=None, metavar="DIR",
                        help="reuse (and store) the fields of the slow anchors (ANTs) here, keyed by the pair's image "
                             "contents and the settings, with the seconds recorded when they were computed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    from nnreg.utilities.files import write_json

    methods, anchor_names = choose(args)
    seeds = [DEFAULT_SEED + k for k in range(args.seeds)]
    dataset = args.dataset.expanduser().resolve()
    out = args.output.expanduser().resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    config = args.config or default_config(dataset)
    dataset_id, _ = link_dataset(dataset, work / "raw")
    pairs = validation_pairs(dataset)
    env = dict(os.environ, nnReg_raw=str(work / "raw"), nnReg_preprocessed=str(work / "preprocessed"),
               nnReg_results=str(work / "results"))
    cache = args.anchor_cache.expanduser().resolve() if args.anchor_cache else None

    rows: list[dict[str, Any]] = []
    if set(NNREG_METHODS) & set(methods):
        rows += nnreg_rows(args, methods, seeds, dataset, dataset_id, len(pairs), out, env, log)
    rows += anchor_rows(anchor_names, pairs, out, cache, work / "anchors.log")
    if "zero" in methods:
        rows.append(zero_row(pairs, out / "zero"))

    for row in rows:
        if row["status"] != "ok":
            continue
        metrics = row["folder"] / "metrics.json"
        command = ["nnreg_evaluate", "-i", str(row["folder"]), "-d", str(dataset), "-o", str(metrics)]
        run(command + (["-c", str(config)] if config else []), log, env)
        means, row["per_pair_dice"] = report.read_metrics(metrics)
        row.update(means)
    ordered = [{k: r.get(k) for k in ROW_KEYS} for r in rows]
    reference = "nnreg_refined" if "nnreg_refined" in methods else "nnreg"
    comparisons = report.differences(ordered, reference)
    summary = report.summarize_seeds(ordered)

    notes = [f"{len(pairs)} validation pairs of {dataset.name}; config {config.name if config else 'default'}; "
             f"nnreg configuration {args.configuration}; seeds {', '.join(map(str, seeds))}."]
    if args.instance_optimization_settings:
        notes.append(f"nnreg_refined: --instance-optimization-settings {args.instance_optimization_settings}")
    if args.finer_grid_settings:
        notes.append(f"nnreg_refined: --finer-grid-settings {args.finer_grid_settings}")
    notes += [f"{r['method']}: {r['cached_pairs']} of {len(pairs)} fields from {cache}, their seconds as recorded "
              f"when computed." for r in rows if r.get("cached_pairs")]
    print(report.format_table(ordered))
    if len(seeds) > 1 and summary:
        print("\nMean ± std (min–max) over seeds\n" + report.format_summary(summary))
    if comparisons:
        print(f"\nPaired per-pair Dice differences, bootstrap {report.BOOTSTRAP_LEVEL:.0%} interval over pairs "
              f"({report.BOOTSTRAP_RESAMPLES} resamples, seed {report.BOOTSTRAP_SEED})\n"
              + report.format_differences(comparisons))
    print("\n" + "\n".join(notes))
    versions = {r["method"]: r["version"] for r in rows if r.get("version")}
    write_json({"dataset": str(dataset), "pairs": len(pairs), "seeds": seeds, "notes": notes, "rows": ordered,
                "summary": summary, "differences": comparisons, "anchor_versions": versions,
                "anchor_settings": {r["method"]: r["settings"] for r in rows if r.get("settings") is not None},
                "bootstrap": {"resamples": report.BOOTSTRAP_RESAMPLES, "seed": report.BOOTSTRAP_SEED,
                              "level": report.BOOTSTRAP_LEVEL}}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
