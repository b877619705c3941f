"""Multi-modal accuracy: T1w fixed images against synthetic T2-like / FLAIR-like moving images, same pairs, same run.

    python benchmarks/multimodal.py --dataset ../shared/data/OpenBrains80 --contrasts t2 flair --output mm \\
        --json mm.json [--split train] [--max-pairs 6] [--model MODEL_FOLDER] [--anchors demons,ants_syn_mi]

The pairs are the dataset's ``validation`` pairs (``--split val``, held-out subjects: for reporting) or ordered pairs
of its training images (``--split train``: for choosing settings). Each moving image is replaced by a synthetic
contrast made from its own label map (:func:`nnreg.example.contrast.synthetic_contrast`, seed = the pair index;
the geometry is untouched, so the moving labels stay its ground truth) and written as ``<PREFIX>_<id>_000M.nii.gz``
(``M`` = 1 for T2, 2 for FLAIR, the LUMIR 2025 naming). Every method also runs on the same pairs with the original
T1 moving image (contrast ``t1``), the reference that "as good as on T1" is measured against.

Methods (each a voxel-unit pull field on the fixed grid, scored with :func:`nnreg.evaluation.evaluate_pair`: Dice
and HD95 over the labels of the dataset's official ``*_All_*`` config, NDV with the moving-image mask):

* ``refine_lncc`` / ``refine_mind``: nnreg's refinement (:func:`nnreg.inference.instance_optimization.refine_field`)
  from the identity with the settings 2 mm plans recorded when this benchmark's tables were measured
  (:data:`REFINEMENT`, 60 + 12 steps without warm-up; kept so those tables reproduce), local NCC, or MIND-SSC with the
  multi-modal default :data:`nnreg.inference.refinement_settings.MULTIMODAL_REFINEMENT` (what ``nnreg_predict``
  uses for a pair of two modalities); ``--mind-settings KEY=VALUE,...`` replaces keys of the MIND rows (tuning);
  images scaled to [0, 1] by their 99.5th percentile;
* ``nnreg_lncc`` / ``nnreg_mind`` (``--model``): ``nnreg_predict -m MODEL --fixed F --moving M``, its recorded
  refinement with ``similarity=lncc``, or with the multi-modal default's keys (and ``--mind-settings``) for every
  contrast, T1 included;
* anchors from ``benchmarks/anchors.py`` (``--anchors``; default ``demons`` and ``ants_syn_mi``, ANTs SyN with Mattes
  mutual information when ``antspyx`` is installed, a "not installed" row otherwise);
* ``zero``: the zero field.

The table gives, per method and contrast, mean Dice, HD95, NDV % and seconds per pair, and for each other contrast
the ratio of its Dice to the same method's T1 Dice. Rows go to ``--json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors as anchor_tools  # noqa: E402  (a sibling script, not a package)

from nnreg.dataset.image_io import read_displacement, read_image, write_displacement, write_image  # noqa: E402
from nnreg.dataset.learn2reg import load_dataset  # noqa: E402
from nnreg.dataset.naming import displacement_filename  # noqa: E402
from nnreg.evaluation import evaluate_pair  # noqa: E402
from nnreg.example.contrast import synthetic_contrast  # noqa: E402
from nnreg.inference.instance_optimization import refine_field  # noqa: E402
from nnreg.inference.refinement_settings import (MULTIMODAL_REFINEMENT, InstanceOptimization,  # noqa: E402
                                                 parse_overrides)

logger = logging.getLogger("nnreg.benchmarks.multimodal")

MODALITY = {"t1": "0000", "t2": "0001", "flair": "0002"}
REFINEMENT = InstanceOptimization(steps=60, fine_steps=12, grid_factor=2, lambda_reg=1.5, integration_steps=3,
                                  fine_grid_factor=1)
ANTS_SYN_MI = anchor_tools.Anchor("ants_syn_mi", "ANTs SyN, Mattes mutual information", "ants", "antspyx",
                                  anchor_tools.ants, {"type_of_transform": "SyNOnly", "syn_metric": "mattes"},
                                  cached=True)
ANCHORS = {**anchor_tools.ANCHORS, ANTS_SYN_MI.name: ANTS_SYN_MI}


def benchmark_pairs(dataset: Path, split: str, max_pairs: int | None) -> list[tuple[Any, Any]]:
    """(fixed, moving) dataset entries with labels: the validation pairs, or ordered pairs of training images."""
    data = load_dataset(dataset)
    if split == "val":
        pairs = [(p.fixed, p.moving) for p in data.validation]
    else:
        pairs = list(itertools.permutations(data.training, 2))
    pairs = [(f, m) for f, m in pairs if f.labels_path().is_file() and m.labels_path().is_file()]
    return pairs[:max_pairs] if max_pairs else pairs


def dice_labels(dataset: Path) -> list[float] | None:
    """The DSC labels of the dataset's official ``*_All_*`` config (None: every label of the fixed map)."""
    for config in sorted(dataset.glob("*_All_evaluation_config.json")):
        for method in json.loads(config.read_text())["evaluation_methods"]:
            if method["metric"] == "dice":
                return [float(v) for v in method["labels"]]
    return None


def make_moving(entry: Any, contrast: str, seed: int, folder: Path) -> Path:
    """The moving image in ``contrast`` (the original for ``t1``), written with the LUMIR 2025 modality suffix."""
    if contrast == "t1":
        return Path(entry.path)
    image, geometry = read_image(entry.path)
    labels, _ = read_image(entry.labels_path(), dtype=np.int32)
    name = Path(entry.path).name.replace("_0000.nii", f"_{MODALITY[contrast]}.nii")
    target = folder / contrast / name
    if not target.is_file():
        write_image(synthetic_contrast(image, labels, contrast, seed=seed), geometry, target)
    return target


def unit_range(image: np.ndarray) -> torch.Tensor:
    """``image`` scaled by its 99.5th percentile (of the foreground) and clipped to [0, 1], as (1, 1, H, W, D)."""
    top = float(np.percentile(image[image > 0], 99.5)) if (image > 0).any() else 1.0
    return torch.from_numpy(np.clip(image / max(top, 1e-6), 0, 1).astype(np.float32))[None, None]


def refinement_method(similarity: str, mind_settings: dict[str, Any]) -> Callable[[Path, Path, Path], float]:
    """A method that refines from the identity with ``similarity``; returns its seconds from files to field."""
    settings = replace(REFINEMENT, similarity=similarity)
    if similarity == "mind":
        settings = settings.with_overrides({**MULTIMODAL_REFINEMENT, **mind_settings})

    def run(fixed_path: Path, moving_path: Path, target: Path) -> float:
        start = time.perf_counter()
        fixed, geometry = read_image(fixed_path)
        moving, _ = read_image(moving_path)
        zero = torch.zeros((1, 3, *fixed.shape))
        field, _ = refine_field(unit_range(fixed), unit_range(moving), zero, settings)
        write_displacement(field[0].permute(1, 2, 3, 0).numpy(), target, geometry)
        return time.perf_counter() - start
    return run


def nnreg_predict_method(model: Path, similarity: str, folder: Path,
                         mind_settings: dict[str, Any]) -> Callable[[Path, Path, Path], float]:
    """``nnreg_predict -m MODEL --fixed F --moving M`` with the recorded refinement and ``similarity``: for ``mind``
    with the multi-modal default's keys (:data:`MULTIMODAL_REFINEMENT`, what ``nnreg_predict`` uses by itself for a
    pair of two modalities) and ``mind_settings``, so that the T1 pairs' row is the same refinement."""
    overrides = {"similarity": similarity}
    if similarity == "mind":
        overrides = {**MULTIMODAL_REFINEMENT, **mind_settings, **overrides}
    text = ",".join(f"{key}={value}" for key, value in overrides.items())

    def run(fixed_path: Path, moving_path: Path, target: Path) -> float:
        out = folder / f"predict_{similarity}"
        start = time.perf_counter()
        subprocess.run(["nnreg_predict", "--fixed", str(fixed_path), "--moving", str(moving_path), "-o", str(out),
                        "-m", str(model), "--instance-optimization-settings", text,
                        "--disable_progress_bar"], check=True, capture_output=True)
        seconds = time.perf_counter() - start
        target.parent.mkdir(parents=True, exist_ok=True)
        (out / displacement_filename(fixed_path, moving_path)).replace(target)
        return seconds
    return run


def anchor_method(name: str, cache: Path | None) -> Callable[[Path, Path, Path], float] | None:
    anchor = ANCHORS[name]
    if not anchor.available():
        return None

    def run(fixed_path: Path, moving_path: Path, target: Path) -> float:
        out = target.parent / "anchor_out"
        seconds, _ = anchor_tools.register_pair(anchor, fixed_path, moving_path, out, cache)
        (out / displacement_filename(fixed_path, moving_path)).replace(target)
        return seconds
    return run


def zero_method(fixed_path: Path, moving_path: Path, target: Path) -> float:
    fixed, geometry = read_image(fixed_path)
    write_displacement(np.zeros((*fixed.shape, 3), np.float32), target, geometry)
    return 0.0


def score(target: Path, fixed: Any, moving: Any, moving_path: Path, labels: list[float] | None) -> dict[str, float]:
    field = read_displacement(target)
    moving_image, _ = read_image(moving_path)
    return evaluate_pair(field, read_image(fixed.labels_path(), dtype=np.int32)[0],
                         read_image(moving.labels_path(), dtype=np.int32)[0], moving_image=moving_image,
                         labels=labels, metrics=["dice", "hd95", "ndv"])


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean per (method, contrast), with the Dice ratio to the method's T1 Dice."""
    table = []
    keys = sorted({(r["method"], r["contrast"]) for r in rows}, key=lambda k: (k[0], list(MODALITY).index(k[1])))
    for method, contrast in keys:
        chosen = [r for r in rows if r["method"] == method and r["contrast"] == contrast]
        entry = {"method": method, "contrast": contrast, "pairs": len(chosen),
                 **{k: float(np.mean([r[k] for r in chosen])) for k in ("dice", "hd95", "ndv", "seconds")}}
        table.append(entry)
    for entry in table:
        t1 = next((e for e in table if e["method"] == entry["method"] and e["contrast"] == "t1"), None)
        entry["dice_vs_t1"] = entry["dice"] / t1["dice"] if t1 and t1["dice"] else float("nan")
    return table


def format_table(table: list[dict[str, Any]], missing: list[str]) -> str:
    lines = [f"{'method':14s} {'contrast':8s} {'pairs':>5s} {'Dice':>7s} {'x T1':>6s} {'HD95':>6s} {'NDV %':>8s} "
             f"{'s/pair':>7s}", "-" * 70]
    for e in table:
        lines.append(f"{e['method']:14s} {e['contrast']:8s} {e['pairs']:5d} {e['dice']:7.4f} {e['dice_vs_t1']:6.3f} "
                     f"{e['hd95']:6.2f} {e['ndv']:8.4f} {e['seconds']:7.1f}")
    lines += [f"{name:14s} not installed ({ANCHORS[name].distribution})" for name in missing]
    return "\n".join(lines)


def methods_of(args: argparse.Namespace) -> tuple[dict[str, Callable[[Path, Path, Path], float]], list[str]]:
    mind_settings = parse_overrides(args.mind_settings)
    methods: dict[str, Callable[[Path, Path, Path], float]] = {
        f"refine_{s}": refinement_method(s, mind_settings) for s in args.similarities}
    if args.model is not None:
        methods.update({f"nnreg_{s}": nnreg_predict_method(args.model, s, args.output / "work", mind_settings)
                        for s in args.similarities})
    missing = []
    for name in filter(None, (n.strip() for n in args.anchors.split(","))):
        if name not in ANCHORS:
            raise SystemExit(f"--anchors: unknown {name} (known: {', '.join(ANCHORS)})")
        method = anchor_method(name, args.anchor_cache)
        if method is None:
            missing.append(name)
        else:
            methods[name] = method
    methods["zero"] = zero_method
    return methods, missing


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--contrasts", nargs="+", default=["t2", "flair"], choices=["t2", "flair"])
    parser.add_argument("--split", choices=["val", "train"], default="val")
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--similarities", nargs="+", default=["lncc", "mind"], choices=["lncc", "mind"])
    parser.add_argument("--mind-settings", default="", help="KEY=VALUE,... replacing keys of the refine_mind rows")
    parser.add_argument("--model", type=Path, default=None, help="a trained nnreg model folder (nnreg_predict -m)")
    parser.add_argument("--anchors", default="demons,ants_syn_mi", help="comma-separated benchmarks/anchors.py names")
    parser.add_argument("--anchor-cache", type=Path, default=None, help="reuse slow anchors' fields from here")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = benchmark_pairs(args.dataset, args.split, args.max_pairs)
    if not pairs:
        raise SystemExit(f"{args.dataset}: no labelled {args.split} pairs")
    labels = dice_labels(args.dataset)
    methods, missing = methods_of(args)
    rows = []
    for index, (fixed, moving) in enumerate(pairs):
        for contrast in ["t1", *args.contrasts]:
            moving_path = make_moving(moving, contrast, index, args.output / "inputs")
            for method, run in methods.items():
                target = args.output / method / contrast / f"pair{index:03d}.nii.gz"
                seconds = run(Path(fixed.path), moving_path, target)
                metrics = score(target, fixed, moving, moving_path, labels)
                rows.append({"method": method, "contrast": contrast, "fixed": fixed.case_id,
                             "moving": moving.case_id, "seconds": seconds, **metrics})
                logger.info("%s %s %s<-%s: Dice %.4f", method, contrast, fixed.case_id, moving.case_id,
                            metrics["dice"])
    table = summarise(rows)
    logger.info("\n%s", format_table(table, missing))
    result = {"split": args.split, "dataset": str(args.dataset), "refinement": REFINEMENT.to_json(),
              "mind_settings": {**MULTIMODAL_REFINEMENT, **parse_overrides(args.mind_settings)},
              "not_installed": missing, "table": table, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
