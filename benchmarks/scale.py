"""nnreg at LUMIR's scale: many images through plan-and-preprocess and the training data pipeline with real workers.

Builds a synthetic Learn2Reg dataset of ``--images`` images (default 3,384, LUMIR's training set) of ``--size``\\ ³
voxels (default 16; ``--full-size`` = LUMIR's 160x224x192), then runs, through the Python API the commands wrap:

1. ``fingerprint + plan``  (``plan_and_preprocess(..., no_preprocessing=True)``, ``--processes`` workers)
2. ``preprocess``          (``plan_and_preprocess`` again: fingerprint and plans reused, arrays written)
3. ``training data``       the trainer's ``PairDataset`` + ``PairLoader`` with ``--loader-workers`` real worker
                           processes, drawing training pairs until **every** image has been loaded at least once
4. ``training``            ``run_training`` (fold 0, a tiny network, ``--train-steps`` steps, real loader workers)

A monitor thread samples every process of the run (this one and all its descendants) from ``/proc`` every 0.1 s:
peak RSS (``VmHWM``) per process and open file descriptors. The table gives images (or samples) per second per
stage, the peak RSS of the parent and of the largest child, and the peak descriptors of any one process.

**Projection to LUMIR at full size on this machine** (stated in the output): ``--calibrate`` full-size images
(160x224x192, default 2) are fingerprinted, preprocessed and loaded in this process; the per-image full-size
seconds times 3,384 images divided by the worker count gives stages 1-2; stage 3 (loading) is projected for the
default training schedule (200 epochs x 250 steps x batch 1 = 50,000 pairs) with the loader workers. Network compute
is not projected here (it does not depend on the number of images; see benchmarks/train_throughput.py).

    python benchmarks/scale.py --images 64 --json scale.json
    python benchmarks/scale.py --json scale.json              # 3,384 images of 16^3
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnreg.dataset.image_io import Geometry, write_image  # noqa: E402
from nnreg.utilities.cpus import usable_cpus  # noqa: E402

logger = logging.getLogger("benchmarks.scale")
LUMIR_IMAGES = 3384
LUMIR_SHAPE = (160, 224, 192)
DEFAULT_SCHEDULE_PAIRS = 200 * 250
TINY = {"n_levels": 2, "base_channels": 4, "flow_channels": 4, "flow_mid_channels": 4, "integration_steps": 2}


# -- monitoring ---------------------------------------------------------------------------------------------
def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/*/stat parent ids)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    parents[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier and p not in found]
        found.extend(frontier)
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Monitor:
    """Samples peak RSS and open descriptors of this process and its descendants in a background thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_rss_kb: dict[int, int] = {}
        self.peak_fds: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        me = os.getpid()
        for pid in _descendants(me):
            rss = _status_kb(pid, "VmHWM")
            try:
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            self.peak_rss_kb[pid] = max(self.peak_rss_kb.get(pid, 0), rss)
            self.peak_fds[pid] = max(self.peak_fds.get(pid, 0), fds)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def summary(self) -> dict[str, Any]:
        me = os.getpid()
        children = {p: r for p, r in self.peak_rss_kb.items() if p != me}
        return {"processes": len(self.peak_rss_kb), "parent_peak_rss_mb": round(self.peak_rss_kb.get(me, 0) / 1024, 1),
                "children_peak_rss_mb": sorted((round(r / 1024, 1) for r in children.values()), reverse=True),
                "max_child_peak_rss_mb": round(max(children.values(), default=0) / 1024, 1),
                "peak_open_fds_parent": self.peak_fds.get(me, 0),
                "peak_open_fds_any_child": max((v for p, v in self.peak_fds.items() if p != me), default=0)}


# -- the stages ---------------------------------------------------------------------------------------------
def _image(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A skull-stripped-looking volume: a noisy ellipsoid in [0, 255] with a zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid ** 2 / np.array([0.8, 0.85, 0.8])[:, None, None, None] ** 2).sum(0))
    image = np.where(radius < 1.0, 120 + 100 * (1 - radius) + rng.normal(0, 10, shape), 0.0)
    return np.clip(image, 0, 255).astype(np.float32)


def build_dataset(root: Path, num_images: int, shape: tuple[int, int, int]) -> Path:
    """A Learn2Reg dataset folder with ``num_images`` training images and 2 validation pairs."""
    geometry = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    template = _image(shape, 0)
    rng = np.random.default_rng(1)
    training = []
    for i in range(num_images):
        name = f"SCALE_{i:04d}_0000.nii.gz"
        image = np.clip(template * rng.uniform(0.9, 1.1), 0, 255).astype(np.float32)
        write_image(image, geometry, root / "imagesTr" / name)
        training.append({"image": f"./imagesTr/{name}"})
    val = []
    for i in range(2):
        name = f"SCALE_{num_images + i:04d}_0000.nii.gz"
        write_image(template, geometry, root / "imagesVal" / name)
        val.append(f"./imagesVal/{name}")
    meta = {"name": root.name, "tensorImageShape": {"0": list(shape)}, "modality": {"0": "T1w"},
            "training": training, "numTraining": num_images,
            "validation": [{"fixed": val[0], "moving": val[1]}, {"fixed": val[1], "moving": val[0]}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _tiny_plans(path: Path) -> None:
    plans = json.loads(path.read_text())
    for config in plans["configurations"].values():
        config["architecture"]["kwargs"].update(TINY)
        config["batch_size"] = 1
    path.write_text(json.dumps(plans, indent=2))


def visit_every_image(folder: Path, cases: list[str], workers: int) -> dict[str, Any]:
    """Draw training pairs through PairDataset/PairLoader until every case has been loaded."""
    import torch

    from nnreg.training.data import PairDataset, PairLoader, PairSampler

    sampler = PairSampler(cases, seed=0)
    loader = PairLoader(PairDataset(folder, sampler, augment=True), batch_size=1, start=0,
                        num_samples=50 * len(cases) + 1000, num_workers=workers, device=torch.device("cpu"))
    seen: set[str] = set()
    start = time.perf_counter()
    try:
        while len(seen) < len(cases):
            index = loader.position
            loader.next_batch()
            pair = sampler(index)
            seen.update((pair.fixed, pair.moving))
    finally:
        loader.close()
    return {"samples": loader.position, "visited": len(seen), "seconds": time.perf_counter() - start}


def calibrate(root: Path, count: int) -> dict[str, float]:
    """Seconds per full-size image (160x224x192) for fingerprint, preprocess and one load, in this process."""
    from nnreg.fingerprint.extract import fingerprint_image
    from nnreg.planning.plans import ConfigurationPlan
    from nnreg.preprocessing.preprocessor import _CaseJob, _run_case
    from nnreg.preprocessing.storage import load_case

    if count <= 0:
        return {}
    folder = root / "calibration"
    geometry = Geometry(LUMIR_SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    paths = []
    for i in range(count):
        path = folder / "raw" / f"FULL_{i:04d}_0000.nii.gz"
        write_image(_image(LUMIR_SHAPE, i), geometry, path)
        paths.append(path)
    config = ConfigurationPlan(data_identifier="calibration", spacing=[1.0] * 3, resampling_factor=[1.0] * 3,
                               resampled_shape=list(LUMIR_SHAPE), crop_start=[0, 0, 0], shape=[160, 224, 192],
                               normalization={"scheme": "fixed_range", "lower": 0.0, "upper": 255.0}, batch_size=1,
                               architecture={})
    times: dict[str, float] = {}
    start = time.perf_counter()
    for path in paths:
        fingerprint_image(str(path))
    times["fingerprint"] = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for path in paths:
        _run_case(_CaseJob(path.name[:-7], str(path), None), config, str(folder / "pre"), "calibration")
    times["preprocess"] = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for path in paths:
        np.asarray(load_case(folder / "pre", path.name[:-7])[0][...])
    times["load"] = (time.perf_counter() - start) / count
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=LUMIR_IMAGES, help="training images (default 3384)")
    parser.add_argument("--size", type=int, default=16, help="edge of the cubic images in voxels (default 16)")
    parser.add_argument("--full-size", action="store_true", help="LUMIR-size images (160x224x192) instead of --size")
    parser.add_argument("--processes", type=int, default=2, help="plan-and-preprocess workers (-np, default 2)")
    parser.add_argument("--loader-workers", type=int, default=2, help="training data-loader workers (default 2)")
    parser.add_argument("--train-steps", type=int, default=20, help="training steps of stage 4 (default 20)")
    parser.add_argument("--calibrate", type=int, default=2,
                        help="full-size images timed for the LUMIR projection (default 2; 0 = no projection)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from nnreg.planning.planner import PlannerSettings
    from nnreg.training import run_training

    shape = LUMIR_SHAPE if args.full_size else (args.size,) * 3
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nnreg_scale_"))
    raw, pre, results = work / "raw", work / "preprocessed", work / "results"
    name = "Dataset990_Scale"
    rows: list[dict[str, Any]] = []

    def stage(label: str, count: int, unit: str, fn: Any) -> Any:
        with Monitor() as monitor:
            start = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - start
        row = {"stage": label, "count": count, "unit": unit, "seconds": round(seconds, 2),
               "per_second": round(count / seconds, 1) if seconds > 0 else None, **monitor.summary()}
        rows.append(row)
        return value

    try:
        stage("build dataset", args.images, "images", lambda: build_dataset(raw / name, args.images, shape))
        options = PlanAndPreprocessOptions(dataset=str(raw / name), raw=str(raw), preprocessed=str(pre),
                                           configurations=("3d_fullres",), num_processes=args.processes,
                                           no_preprocessing=True,
                                           planner=PlannerSettings(device="cpu", memory_target_gb=4.0))
        stage("fingerprint + plan", args.images, "images", lambda: plan_and_preprocess(options))
        _tiny_plans(pre / name / "nnRegPlans.json")
        options.no_preprocessing = False
        stage("preprocess", args.images, "images", lambda: plan_and_preprocess(options))
        folder = pre / name / "nnRegPlans_3d_fullres"
        cases = sorted(p.stem for p in folder.glob("*.json"))
        visit = stage("training data (every image)", 0, "samples",
                      lambda: visit_every_image(folder, cases, args.loader_workers))
        rows[-1].update(count=visit["samples"], per_second=round(visit["samples"] / visit["seconds"], 1),
                        visited=visit["visited"])
        overrides = {"epochs": 1, "iterations_per_epoch": args.train_steps, "val_pairs": 1,
                     "num_workers": args.loader_workers, "final_validation": False, "ncc_window": 3}
        stage("training (fold 0)", args.train_steps, "steps",
              lambda: run_training(name, "0", device="cpu", overrides=overrides, preprocessed=pre, results=results))
        calibration = calibrate(work, 0 if args.full_size else args.calibrate)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    cores = usable_cpus()
    projection: dict[str, Any] = {}
    if args.full_size:
        calibration = {}
        factor = LUMIR_IMAGES / args.images
        for row in rows[1:3]:
            projection[row["stage"]] = round(row["seconds"] * factor / 60, 1)
    elif calibration:
        workers = max(1, min(args.processes, cores))
        projection["fingerprint + plan"] = round(calibration["fingerprint"] * LUMIR_IMAGES / workers / 60, 1)
        projection["preprocess"] = round(calibration["preprocess"] * LUMIR_IMAGES / workers / 60, 1)
        loaders = max(1, min(args.loader_workers, cores))
        projection["training data, 200x250 pairs"] = round(
            2 * calibration["load"] * DEFAULT_SCHEDULE_PAIRS / loaders / 60, 1)
    report = {"images": args.images, "shape": list(shape), "processes": args.processes,
              "loader_workers": args.loader_workers, "usable_cpus": cores, "open_files_limit":
              resource.getrlimit(resource.RLIMIT_NOFILE)[0], "stages": rows,
              "calibration_seconds_per_full_size_image": {k: round(v, 3) for k, v in calibration.items()},
              "lumir_full_size_projection_minutes": projection}
    print(f"{args.images} images of {'x'.join(map(str, shape))}, {args.processes} preprocessing / "
          f"{args.loader_workers} loader workers, {cores} usable CPUs")
    print("| stage | count | s | per s | processes | parent peak RSS MB | largest child peak RSS MB | "
          "peak fds parent / child |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['stage']} | {row['count']} {row['unit']} | {row['seconds']} | {row['per_second']} | "
              f"{row['processes']} | {row['parent_peak_rss_mb']} | {row['max_child_peak_rss_mb']} | "
              f"{row['peak_open_fds_parent']} / {row['peak_open_fds_any_child']} |")
    if projection:
        how = ("measured per-image seconds at 160x224x192 x 3384 / workers" if not args.full_size
               else "measured stage time x 3384 / images")
        print(f"projected for LUMIR at full size ({how}), minutes: "
              + ", ".join(f"{k} {v}" for k, v in projection.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
