"""CPU inference benchmark: one full-size 160x224x192 pair, from files to written field, on this machine's cores.

Runs each case in its own subprocess (fresh allocator, fresh caches) and reads that process's peak RSS from
``os.wait4`` (the kernel's rusage of the child, i.e. ``getrusage`` of children, one child at a time). Cases: the
default plans' configurations (``3d_fullres``, ``3d_halfres`` as planned for a 160x224x192 dataset) next to the
VoxelMorph baseline architecture on the fullres grid, each with glibc malloc and with jemalloc (LD_PRELOAD, decay
off), and with/without channels_last_3d. The nnreg cases refine as the plans record (``--instance-optimization``),
timed apart from the network. Untrained (randomly initialised) weights: the network's cost does not depend on them;
the refinement's steps can (its early stop), so the steps run are reported next to its time.

    python benchmarks/inference_cpu.py --json benchmarks/results/inference_cpu.json

Input: the first validation pair of ``../shared/data/OpenBrains160`` if present, else a synthetic pair.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("nnreg.benchmarks")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "OpenBrains160"
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"   # "decay off": keep freed pages for reuse
VOXELMORPH = {"network_class": "VoxelMorph", "kwargs": {}}


# -- child: one prediction, stage timings ---------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Load the model, read the pair, predict, write the field; print stage timings as JSON."""
    import torch

    from nnreg.inference import ExportOptions, nnRegPredictor, pair_outputs
    from nnreg.inference.export import ExportJob, export_pair

    t0 = time.perf_counter()
    predictor = nnRegPredictor(device="cpu", channels_last=args.channels_last,
                               instance_optimization=args.instance_optimization)
    predictor.initialize_from_trained_model_folder(args.model)
    t1 = time.perf_counter()
    prepared = predictor.prepare(Path(args.fixed), Path(args.moving))
    t2 = time.perf_counter()
    network_field = predictor.predict_network_grid(prepared.fixed_network, prepared.moving_network, refine=False)
    t_net = time.perf_counter()
    network_field = predictor.refine(prepared.fixed_network, prepared.moving_network, network_field)
    report = predictor.last_refinement
    t3 = time.perf_counter()
    field = predictor.refine_on_original_grid(prepared)      # the finer-grid stage, where it applies
    finer = predictor.last_finer_grid
    t_finer = time.perf_counter()
    if field is None:
        field = prepared.mapping.field_to_original(network_field[0].numpy())
    del network_field
    t4 = time.perf_counter()
    outputs = pair_outputs(Path(args.out), args.fixed, args.moving)
    export_pair(ExportJob(outputs, ExportOptions(), field, prepared.fixed_geometry))
    t5 = time.perf_counter()
    print(json.dumps({"load_model_s": t1 - t0, "read_preprocess_s": t2 - t1, "network_s": t_net - t2,
                      "refine_s": t3 - t_net, "refine_steps": 0 if report is None else report.steps_run,
                      "finer_s": t_finer - t3, "finer_steps": 0 if finer is None else finer.steps_run,
                      "to_original_s": t4 - t_finer, "write_s": t5 - t4, "files_to_field_s": t5 - t1,
                      "threads": torch.get_num_threads(), "network_shape": list(prepared.fixed_network.shape),
                      "field_shape": list(field.shape)}))


# -- parent: set-up, one subprocess per case, table ---------------------------------------------------------------
def _pair(work: Path) -> tuple[Path, Path, str]:
    """(fixed, moving, source): OpenBrains160's first validation pair, or a synthetic LUMIR-sized pair."""
    if (SHARED / "dataset.json").is_file():
        pair = json.loads((SHARED / "dataset.json").read_text())["validation"][0]
        return SHARED / pair["fixed"][2:], SHARED / pair["moving"][2:], "OpenBrains160"
    import numpy as np
    from scipy import ndimage

    from nnreg.dataset.image_io import Geometry, write_image

    shape = (160, 224, 192)
    geometry = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    paths = []
    for k in range(2):
        rng = np.random.default_rng(k)
        image = ndimage.gaussian_filter(rng.uniform(0, 255, shape).astype(np.float32), 3)
        paths.append(work / f"SYN_{k:04d}_0000.nii.gz")
        write_image(image, geometry, paths[-1])
    return paths[0], paths[1], "synthetic"


def _plans(work: Path, device: str, planner: str) -> Any:
    """The plans of a 160x224x192, 1 mm dataset (OpenBrains160's own when present), made as
    ``nnreg_plan_and_preprocess --device DEVICE`` makes them (``planner="memory"``, the CLI's memory-driven decision)
    or with the fixed shape-derived defaults (``planner="fixed"``)."""
    from nnreg.planning.budget import memory_budget_gb
    from nnreg.planning.decision import memory_driven_decision
    from nnreg.planning.planner import PlannerSettings, fixed_default_decision, plan_experiment

    decide = memory_driven_decision if planner == "memory" else fixed_default_decision
    settings = PlannerSettings(device=device, memory_target_gb=memory_budget_gb(device, None, None))
    if (SHARED / "dataset.json").is_file():
        from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess

        _, plans = plan_and_preprocess(PlanAndPreprocessOptions(dataset=str(SHARED), preprocessed=str(work / "pre"),
                                                                num_processes=0, no_preprocessing=True,
                                                                planner=settings), decide)
        return plans
    fingerprint = {"dataset_name": "Dataset999_Synthetic160", "median_spacing": [1.0, 1.0, 1.0],
                   "median_shape": [160, 224, 192], "union_foreground_bbox": [[0, 160], [0, 224], [0, 192]],
                   "same_grid": True, "intensity": {"min": 0.0, "max": 255.0, "percentiles": {"99.5": 250.0}}}
    return plan_experiment(fingerprint, settings, decide)


def _model_folder(work: Path, plans: Any, configuration: str, architecture: dict[str, Any] | None, tag: str) -> Path:
    """A model folder in the trainer's format with random weights (fold 0)."""
    import torch

    from nnreg.networks import build_network

    folder = work / "results" / f"{tag}__{plans.plans_name}__{configuration}"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    plans_json = plans.to_json()
    if architecture is not None:
        plans_json["configurations"][configuration]["architecture"] = architecture
    (folder / "plans.json").write_text(json.dumps(plans_json))
    torch.manual_seed(0)
    network = build_network(plans_json["configurations"][configuration]["architecture"])
    torch.save({"format_version": 1, "network_weights": network.state_dict(), "trainer_name": tag,
                "init_args": {"dataset_name": plans.dataset_name, "plans_name": plans.plans_name,
                              "configuration": configuration, "fold": "0", "hyperparameters": {}}},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _run_case(case: dict[str, Any], fixed: Path, moving: Path, work: Path) -> dict[str, Any]:
    """One case in a fresh subprocess; wall time of the process and its peak RSS from ``os.wait4``."""
    env = dict(os.environ)
    if case["jemalloc"]:
        env["LD_PRELOAD"] = str(JEMALLOC)
        env["MALLOC_CONF"] = JEMALLOC_CONF
    out = work / "out" / case["name"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", str(case["model"]),
           "--fixed", str(fixed), "--moving", str(moving), "--out", str(out)]
    if case.get("instance_optimization") is not None:
        cmd += ["--instance-optimization", str(case["instance_optimization"])]
    if case["channels_last"]:
        cmd.append("--channels-last")
    log = work / f"{case['name']}.log"
    with log.open("w") as stdout_file, (work / f"{case['name']}.err").open("w") as stderr_file:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, env=env, stdout=stdout_file, stderr=stderr_file)
        _, status, usage = os.wait4(process.pid, 0)   # rusage of this child alone
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = log.read_text(), (work / f"{case['name']}.err").read_text()
    row = {k: v for k, v in case.items() if k != "model"}
    if process.returncode != 0:
        row.update(error=stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {process.returncode}")
        return row
    row.update(json.loads(stdout.strip().splitlines()[-1]))
    row.update(process_wall_s=wall, process_cpu_s=usage.ru_utime + usage.ru_stime,
               peak_rss_gb=usage.ru_maxrss / 1024**2)
    return row


def _cases(work: Path, plans: Any, channels_last: bool, jemalloc: bool,
           instance_optimization: int | None) -> list[dict[str, Any]]:
    models = {"VoxelMorph": _model_folder(work, plans, "3d_fullres", VOXELMORPH, "voxelmorph"),
              "3d_halfres": _model_folder(work, plans, "3d_halfres", None, "default"),
              "3d_fullres": _model_folder(work, plans, "3d_fullres", None, "default")}
    allocators = [False, True] if jemalloc and JEMALLOC.is_file() else [False]
    layouts = [False, True] if channels_last else [False]
    cases = []
    for name, model in models.items():
        for use_jemalloc in allocators:
            for use_cl in layouts:
                label = name + (" +jemalloc" if use_jemalloc else "") + (" +channels_last" if use_cl else "")
                cases.append({"name": label.replace(" ", "_").replace("+", ""), "label": label, "model": model,
                              "configuration": name, "jemalloc": use_jemalloc, "channels_last": use_cl,
                              # the VoxelMorph baseline is the network alone, as its users run it
                              "instance_optimization": 0 if name == "VoxelMorph" else instance_optimization})
    return cases


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'case':<36} {'files->field s':>14} {'network s':>10} {'refine s':>9} {'steps':>6} {'finer s':>8} "
            f"{'steps':>6} {'process s':>10} "
            f"{'process CPU s':>13} {'peak RSS GB':>12} {'net grid':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['label']:<36} failed: {r['error']}")
            continue
        grid = "x".join(map(str, r["network_shape"]))
        lines.append(f"{r['label']:<36} {r['files_to_field_s']:>14.1f} {r['network_s']:>10.1f} "
                     f"{r['refine_s']:>9.1f} {r['refine_steps']:>6d} {r.get('finer_s', 0.0):>8.1f} "
                     f"{r.get('finer_steps', 0):>6d} {r['process_wall_s']:>10.1f} "
                     f"{r['process_cpu_s']:>13.1f} {r['peak_rss_gb']:>12.2f} {grid:>14}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--no-channels-last", action="store_true", help="Skip the channels_last_3d cases.")
    parser.add_argument("--no-jemalloc", action="store_true", help="Skip the jemalloc cases.")
    parser.add_argument("--only", nargs="*", default=None, help="Run only these case names.")
    parser.add_argument("--plans-device", choices=["cuda", "cpu"], default="cuda",
                        help="Plan as nnreg_plan_and_preprocess --device does (default cuda, the CLI default).")
    parser.add_argument("--planner", choices=["memory", "fixed"], default="memory",
                        help="memory = the CLI's memory-driven decision; fixed = shape-derived defaults.")
    parser.add_argument("--instance-optimization", type=int, default=None, metavar="STEPS",
                        help="Refinement steps of the nnreg cases (default: the plans' recorded setting, as "
                             "nnreg_predict does; 0 = network alone). Untrained weights give a near-zero start, "
                             "so the early stop may end it sooner than a trained model's.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--fixed", help=argparse.SUPPRESS)
    parser.add_argument("--moving", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="nnreg-bench-") as tmp:
        work = Path(tmp)
        fixed, moving, source = _pair(work)
        plans = _plans(work, args.plans_device, args.planner)
        cases = _cases(work, plans, not args.no_channels_last, not args.no_jemalloc, args.instance_optimization)
        if args.only:
            cases = [c for c in cases if c["name"] in args.only]
        rows = []
        load_before = os.getloadavg()
        for case in cases:
            logger.info("running %s ...", case["label"])
            rows.append(_run_case(case, fixed, moving, work))
            logger.info("  %s", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()})
        load_after = os.getloadavg()
    table = _table(rows)
    logger.info("\n%s", table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "input": source, "pair": [fixed.name, moving.name], "cpu_cores": len(os.sched_getaffinity(0)),
            "plans_device": args.plans_device, "planner": args.planner,
            "architectures": {n: c.architecture for n, c in plans.configurations.items()},
            "machine": platform.processor() or platform.machine(), "load_average_before": load_before,
            "load_average_after": load_after, "jemalloc": str(JEMALLOC) if JEMALLOC.is_file() else None,
            "malloc_conf": JEMALLOC_CONF, "rows": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
