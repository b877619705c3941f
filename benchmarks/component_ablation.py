"""Rank the paper's components at equal wall time: backbone, +CA, +LK, +BF, each trained for M minutes.

    python benchmarks/component_ablation.py -d 500 --minutes 10 --json ablation.json [--fold 0]
        [--variants backbone CA LK BF] [--refinement-steps 100] [--device cpu] [--eval-config CONFIG.json]

The dataset must be planned and preprocessed (``nnreg_plan_and_preprocess -d 500``). For each variant the script
adds a configuration ``<configuration>_abl_<variant>`` to the plans file that inherits everything (grid,
preprocessed data, width, batch size) from ``--configuration`` and changes only the component's keys, then runs
the documented commands:

    nnreg_train D FOLD -c CONFIG --time-budget M --no-final-validation --device DEVICE
    nnreg_predict -i RAW/DATASET -o OUT -d D -c CONFIG -f FOLD --instance-optimization 0   (and N: refinement)
    nnreg_evaluate -i OUT -d RAW/DATASET [-c CONFIG.json] -o metrics.json

so the held-out pairs are the dataset's ``validation`` pairs (never trained on). Variants (plans keys relative
to the backbone = the configuration with kernel 3 and CA / BF off): ``CA`` co-attention at the levels
``affordable_co_attention_levels`` lists, ``LK`` kernel 5 (the paper's replacement), ``LK-id`` kernel 5 in
LKU-Net's layout with identity branches, ``BF`` bilateral filter on the predicted field (the paper's placement),
``BF-velocity`` on the finest velocity (nnreg's earlier placement), ``IC`` the backbone trained symmetrically
with the inverse-consistency term (plans key ``symmetric_training``, ``nnreg.training.symmetric``; ``lambda_ic`` 1,
``IC-small`` the same with ``lambda_ic`` 0.1). For every pair
whose reverse pair is also predicted (OpenBrains80 and LUMIR list both orders) the inverse-consistency error of the
two predicted fields, ``|phi_ab o phi_ba - id|`` in voxels (mean and max), is reported too. Prints a table,
writes ``--json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from nnreg.dataset.locate import resolve_dataset_name
from nnreg.networks import affordable_co_attention_levels
from nnreg.paths import preprocessed_folder, raw_folder, results_folder
from nnreg.planning.plans import Plans
from nnreg.utilities.files import read_json, write_json

logger = logging.getLogger("component_ablation")

BACKBONE = {"kernel_size": 3, "co_attention": False, "bilateral_filter": False, "large_kernel_identity": False}
VARIANTS = ("backbone", "CA", "LK", "LK-id", "BF", "BF-velocity", "IC", "IC-small")
#: configuration-level keys (beside the architecture) a variant sets
CONFIGURATION_KEYS = {"IC": {"symmetric_training": {"lambda_ic": 1.0}},
                      "IC-small": {"symmetric_training": {"lambda_ic": 0.1}}}
DEFAULT_VARIANTS = ("backbone", "CA", "LK", "BF")
COMMAND_MODULES = {"nnreg_train": "nnreg.cli.train", "nnreg_predict": "nnreg.cli.predict",
                   "nnreg_evaluate": "nnreg.cli.evaluate"}


def variant_kwargs(variant: str, kwargs: dict[str, Any], shape: Sequence[int]) -> dict[str, Any]:
    """The architecture kwargs a variant overrides (relative to the base configuration's ``kwargs``)."""
    out = dict(BACKBONE)
    if variant == "CA":
        levels = affordable_co_attention_levels(shape, int(kwargs.get("n_levels", 5)),
                                                int(kwargs.get("skip_levels", 0)))
        out.update(co_attention=True, co_attention_levels=levels)
    elif variant == "LK":
        out.update(kernel_size=5)
    elif variant == "LK-id":
        out.update(kernel_size=5, large_kernel_identity=True)
    elif variant == "BF":
        out.update(bilateral_filter=True, bilateral_on="field")
    elif variant == "BF-velocity":
        out.update(bilateral_filter=True, bilateral_on="velocity")
    elif variant not in ("backbone", *CONFIGURATION_KEYS):
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    return out


def add_variant_configurations(plans_path: Path, base: str, variants: Sequence[str]) -> dict[str, str]:
    """Write ``<base>_abl_<variant>`` entries (inheriting ``base``) into the plans file; variant -> name."""
    raw = read_json(plans_path)
    plans = Plans.load(plans_path)
    config = plans.configuration(base)
    names = {}
    for variant in variants:
        name = f"{base}_abl_{variant}"
        overrides = variant_kwargs(variant, config.architecture.get("kwargs", {}), config.shape)
        raw["configurations"][name] = {"inherits_from": base, "architecture": {"kwargs": overrides},
                                       **CONFIGURATION_KEYS.get(variant, {})}
        names[variant] = name
    write_json(raw, plans_path)
    return names


def command(name: str) -> list[str]:
    """The installed console script, or the same entry through this Python."""
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-c", f"import sys; from {COMMAND_MODULES[name]} import main; sys.exit(main())"]


def run(args: list[str], log: Path) -> float:
    """Run a command (its output to ``log``), fail loudly; returns its wall seconds."""
    start = time.perf_counter()
    logger.info("$ %s", " ".join(args))
    with log.open("a") as out:
        out.write("$ " + " ".join(args) + "\n")
        out.flush()
        result = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise RuntimeError(f"{args[0]} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - start


def summary(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Dice, HD95, TRE, NDV means from a ``metrics.json`` (official aggregate names or short metric names)."""
    aggregates = metrics.get("aggregates", {})
    out: dict[str, float | None] = {"dice": None, "hd95": None, "tre": None, "ndv": None}
    for name, values in aggregates.items():
        low = name.lower()
        key = ("dice" if "dsc" in low or "dice" in low else "hd95" if "hd95" in low or "95" in low
               else "tre" if "tre" in low or "target registration" in low
               else "ndv" if "ndv" in low or "non-diffeomorphic" in low else None)
        if key is not None and out[key] is None:
            out[key] = values.get("mean")
    return out


def pairwise_inverse_consistency(folder: Path) -> dict[str, float | None]:
    """Mean / max over pairs of ``|phi_ab o phi_ba - id|`` (voxels) for every predicted pair whose reverse exists."""
    from nnreg.dataset.image_io import read_displacement
    from nnreg.spatial.inverse import inverse_consistency

    fields = {}
    for path in sorted(folder.glob("disp_*_*.nii.gz")):
        parts = path.name[len("disp_"):-len(".nii.gz")].split("_")
        if len(parts) == 2:
            fields[(parts[0], parts[1])] = path
    means, maxima = [], []
    for (a, b), path in fields.items():
        if a < b and (b, a) in fields:
            u = torch.from_numpy(read_displacement(path)).float().permute(3, 0, 1, 2)[None]
            w = torch.from_numpy(read_displacement(fields[(b, a)])).float().permute(3, 0, 1, 2)[None]
            error = inverse_consistency(u, w)
            means.append(error.forward_inverse_mean)
            maxima.append(error.forward_inverse_max)
    if not means:
        return {"ic_mean": None, "ic_max": None, "ic_pairs": 0}
    return {"ic_mean": float(sum(means) / len(means)), "ic_max": float(max(maxima)), "ic_pairs": len(means)}


def trained_schedule(fold_folder: Path) -> dict[str, Any]:
    """Epochs and iterations the time budget chose (from checkpoint_final.pth)."""
    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    hp = checkpoint["init_args"].get("hyperparameters", {})
    return {"epochs": int(checkpoint["current_epoch"]), "iterations_per_epoch": hp.get("iterations_per_epoch")}


def run_ablation(dataset: str, minutes: float, out_dir: Path, fold: str = "0", configuration: str = "3d_fullres",
                 variants: Sequence[str] = DEFAULT_VARIANTS, refinement_steps: int = 100, device: str = "cpu",
                 eval_config: Sequence[Path] = (), plans_name: str = "nnRegPlans") -> list[dict[str, Any]]:
    """Train, predict and evaluate every variant; one result row per variant."""
    pre_root = preprocessed_folder(None)
    name = resolve_dataset_name(dataset, pre_root)
    plans_path = pre_root / name / f"{plans_name}.json"
    if not plans_path.is_file():
        raise SystemExit(f"component_ablation: {plans_path} does not exist (run nnreg_plan_and_preprocess -d "
                         f"{dataset} first)")
    raw_dataset = raw_folder(None) / name
    names = add_variant_configurations(plans_path, configuration, variants)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in variants:
        config = names[variant]
        log = out_dir / f"{variant}.log"
        log.write_text("")
        train_seconds = run([*command("nnreg_train"), dataset, fold, "-c", config, "-p", plans_name,
                             "--time-budget", str(minutes), "--no-final-validation", "--device", device], log)
        fold_folder = results_folder(None) / name / f"nnRegTrainer__{plans_name}__{config}" / f"fold_{fold}"
        row: dict[str, Any] = {"variant": variant, "configuration": config,
                               "architecture": Plans.load(plans_path).configuration(config).architecture,
                               "train_seconds": train_seconds, **trained_schedule(fold_folder)}
        for label, steps in (("net", 0), ("refined", refinement_steps)):
            if label == "refined" and steps <= 0:
                continue
            pred_dir = out_dir / variant / label
            seconds = run([*command("nnreg_predict"), "-i", str(raw_dataset), "-o", str(pred_dir), "-d", dataset,
                           "-c", config, "-p", plans_name, "-f", fold, "--device", device,
                           "--instance-optimization", str(steps), "--disable_progress_bar"], log)
            metrics_path = out_dir / variant / f"metrics_{label}.json"
            evaluate = [*command("nnreg_evaluate"), "-i", str(pred_dir), "-d", str(raw_dataset),
                        "-o", str(metrics_path)]
            if eval_config:
                evaluate += ["-c", *[str(c) for c in eval_config]]
            run(evaluate, log)
            row[label] = {**summary(read_json(metrics_path)), **pairwise_inverse_consistency(pred_dir),
                          "predict_seconds": seconds}
        rows.append(row)
        logger.info("%s: %s", variant, row.get("net"))
    return rows


def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table (pasted into documentation/network.md)."""
    lines = ["| variant | train min | epochs x iters | Dice | HD95 | NDV % | IC error mean / max (vox) | "
             "Dice (refined) | NDV % (refined) | predict s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        net, refined = r.get("net", {}), r.get("refined", {})
        lines.append(f"| {r['variant']} | {r['train_seconds'] / 60:.1f} | {r['epochs']} x {r['iterations_per_epoch']} | "
                     f"{_cell(net.get('dice'))} | {_cell(net.get('hd95'), 2)} | {_cell(net.get('ndv'))} | "
                     f"{_cell(net.get('ic_mean'), 3)} / {_cell(net.get('ic_max'), 2)} | "
                     f"{_cell(refined.get('dice'))} | {_cell(refined.get('ndv'))} | "
                     f"{_cell(net.get('predict_seconds'), 1)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dataset", required=True, help="Dataset id or name (planned and preprocessed).")
    parser.add_argument("--minutes", type=float, required=True, help="Training wall time per variant.")
    parser.add_argument("--json", type=Path, required=True, help="Write the rows here.")
    parser.add_argument("--fold", default="0", help="Fold to train (default 0).")
    parser.add_argument("--configuration", default="3d_fullres", help="Base configuration (default 3d_fullres).")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    parser.add_argument("--refinement-steps", type=int, default=100,
                        help="Also evaluate with N test-time refinement steps (0: network only).")
    parser.add_argument("--device", default="cpu", help="Training and prediction device (default cpu).")
    parser.add_argument("--eval-config", type=Path, nargs="*", default=[],
                        help="Official evaluation config(s) for nnreg_evaluate -c.")
    parser.add_argument("--output", type=Path, default=None,
                        help="Folder for predictions, metrics and logs (default: next to --json).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = args.output or args.json.with_suffix("")
    rows = run_ablation(args.dataset, args.minutes, out_dir, args.fold, args.configuration, args.variants,
                        args.refinement_steps, args.device, args.eval_config)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
