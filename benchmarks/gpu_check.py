"""Check nnreg's CUDA path on a GPU: planned memory vs measured, bf16 throughput, GPU inference, torchrun resume.

    python benchmarks/gpu_check.py [--json OUT.json] [--budgets 24 80] [--steps 3]
    python benchmarks/gpu_check.py --cpu-smoke [--json OUT.json]     # every piece on the CPU at tiny shapes

On a CUDA machine (meant to finish within 8 minutes on one A100/H100-class GPU):

1. **memory**: for each budget (GB), the ``3d_fullres`` configuration the real planner chooses for a LUMIR-shaped
   fingerprint (160×224×192 at 1 mm, :func:`plan_lumir`), then real training steps at the planned batch size on
   synthetic data, exactly as ``nnRegTrainer.train_step`` does them (bf16 autocast, Adam, gradient clipping,
   ``cudnn.benchmark``): ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the first (cold) step
   and of a steady-state step against the planner's predicted peak and usable budget;
2. **throughput**: bf16 training steps/s of each planned network and of the VoxelMorph baseline, same shape;
3. **inference**: seconds per pair of ``nnRegPredictor.predict_pair`` (preprocessing, network, field back on the
   original grid) at 160×224×192 on the GPU with the planned network (random weights);
4. **torchrun**: a tiny synthetic dataset is planned and preprocessed, ``torchrun --nproc_per_node 1 -m
   nnreg.cli.train`` trains 2 epochs and writes checkpoints, a second run with ``--c`` resumes to epoch 3; then a
   world-size-1 process group on the device's backend (NCCL on CUDA, gloo on CPU) wraps the network in
   ``DistributedDataParallel`` for one step (``nnreg_train`` itself only joins a process group at world size > 1).

Prints a table and writes ``--json``. Without CUDA (and without ``--cpu-smoke``) it prints one line and exits
with code 3. Every piece takes a ``device`` argument, so the tests run them on the CPU at tiny shapes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nnreg.losses import DeepSupervisedRegistrationLoss
from nnreg.networks import build_network, voxelmorph_architecture
from nnreg.planning.decision import memory_driven_decision
from nnreg.planning.memory import estimate_memory
from nnreg.planning.planner import PlannerSettings, plan_configuration, settings_for
from nnreg.planning.plans import ConfigurationPlan

logger = logging.getLogger("gpu_check")

NO_CUDA_EXIT = 3
LUMIR_SHAPE = (160, 224, 192)
SMOKE_SHAPE = (16, 16, 16)
GRAD_CLIP_NORM = 12.0            # nnRegTrainer's default
TINY_TRAINING_ARCHITECTURE = {"n_levels": 3, "base_channels": 4, "flow_channels": 8, "flow_mid_channels": 4,
                              "integration_steps": 3, "kernel_size": 3, "skip_levels": 0}


# -- planning ------------------------------------------------------------------------------------------------
def lumir_fingerprint(shape: Sequence[int] = LUMIR_SHAPE) -> dict[str, Any]:
    """A LUMIR-shaped dataset fingerprint (1 mm, intensities in [0, 255], foreground filling the image)."""
    shape = [int(s) for s in shape]
    return {"dataset_name": "Dataset000_LUMIRShaped", "median_spacing": [1.0, 1.0, 1.0], "median_shape": shape,
            "union_foreground_bbox": [[0, s] for s in shape], "same_grid": True,
            "intensity": {"min": 0.0, "max": 255.0, "percentiles": {"99.5": 240.0}}}


def plan_lumir(budget_gb: float, shape: Sequence[int] = LUMIR_SHAPE, device: str = "cuda") -> ConfigurationPlan:
    """The ``3d_fullres`` configuration the memory-driven planner writes for a LUMIR-shaped fingerprint."""
    settings = PlannerSettings(device=device, memory_target_gb=float(budget_gb))
    return plan_configuration("3d_fullres", 1.0, lumir_fingerprint(shape), settings_for("3d_fullres", settings),
                              settings.plans_name, memory_driven_decision)


def describe_architecture(architecture: dict[str, Any]) -> str:
    """Short label: network class, width, kernel, skipped levels."""
    kw = architecture.get("kwargs", {})
    if architecture.get("network_class") != "CascadeRegNet":
        return str(architecture.get("network_class"))
    res = ["full", "1/2", "1/4"][min(2, int(kw.get("skip_levels", 0)))]
    return f"width {kw.get('base_channels')}, K {kw.get('kernel_size')}, {res} res"


# -- training steps ------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: DeepSupervisedRegistrationLoss,
                moving: torch.Tensor, fixed: torch.Tensor, device: torch.device, amp: bool) -> float:
    """``nnRegTrainer.train_step`` with its default hyperparameters."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        output = model(moving, fixed)
    loss, _ = loss_fn(moving, fixed, output)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    return float(loss.detach())


def _synthetic_batch(batch: int, shape: Sequence[int], device: torch.device, seed: int = 0) -> tuple[torch.Tensor,
                                                                                                      torch.Tensor]:
    """Two smooth random (batch, 1, *shape) images in [0, 1] on ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.avg_pool3d(torch.rand(2 * batch, 1, *shape, generator=g), 5, 1, 2)
    images = (images - images.amin()) / (images.amax() - images.amin())
    return images[:batch].contiguous().to(device), images[batch:].contiguous().to(device)


def measure_training(architecture: dict[str, Any], shape: Sequence[int], batch_size: int, device: str | torch.device,
                     steps: int = 3, amp: bool = True) -> dict[str, Any]:
    """Peak memory of the first and of a steady-state training step (CUDA only) and steps/s over ``steps`` more."""
    device = torch.device(device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_network(architecture).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    loss_fn = DeepSupervisedRegistrationLoss(1.0, 6.0, 9, True)
    moving, fixed = _synthetic_batch(batch_size, shape, device)
    cuda = device.type == "cuda"
    row: dict[str, Any] = {"batch_size": int(batch_size), "shape": [int(s) for s in shape],
                           "amp": bool(amp and cuda)}
    if cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        row["resident_before_first_step_bytes"] = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    row["first_loss"] = _train_step(model, optimizer, loss_fn, moving, fixed, device, amp)
    synchronize(device)
    row["first_step_seconds"] = time.perf_counter() - start
    if cuda:
        row["first_step_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        row["first_step_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
    _train_step(model, optimizer, loss_fn, moving, fixed, device, amp)
    synchronize(device)
    if cuda:
        row["steady_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        row["steady_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    start = time.perf_counter()
    for _ in range(steps):
        last = _train_step(model, optimizer, loss_fn, moving, fixed, device, amp)
    synchronize(device)
    seconds = time.perf_counter() - start
    row["steps_timed"] = int(steps)
    row["steps_per_second"] = steps / seconds if steps else None
    row["pairs_per_second"] = steps * batch_size / seconds if steps else None
    row["last_loss"] = last if steps else None
    row["finite"] = bool(math.isfinite(row["first_loss"]) and (not steps or math.isfinite(last)))
    del model, optimizer, moving, fixed
    if cuda:
        torch.cuda.empty_cache()
    return row


def memory_row(budget_gb: float, shape: Sequence[int], device: str, steps: int) -> dict[str, Any]:
    """Plan for ``budget_gb``, then measure the planned configuration's training steps on ``device``."""
    start = time.perf_counter()
    plan = plan_lumir(budget_gb, shape, "cuda" if torch.device(device).type == "cuda" else "cpu")
    planning_seconds = time.perf_counter() - start
    planner_device = "cuda" if torch.device(device).type == "cuda" else "cpu"
    estimate = estimate_memory(plan.architecture, plan.shape, plan.batch_size, planner_device)
    row = {"budget_gb": float(budget_gb), "network": describe_architecture(plan.architecture),
           "architecture": plan.architecture, "planned_shape": list(plan.shape), "planning_seconds": planning_seconds,
           "predicted_training_peak_bytes": estimate.training_peak_bytes,
           "predicted_step_bytes": estimate.step_bytes, "predicted_resident_bytes": estimate.resident_bytes,
           "usable_bytes": float(plan.notes.get("usable_gb", float("nan"))) * 1e9,
           "predicted_tflop_per_step": estimate.flops_training_step / 1e12}
    row.update(measure_training(plan.architecture, plan.shape, plan.batch_size, device, steps))
    if "first_step_max_allocated_bytes" in row:
        peak = max(row["first_step_max_allocated_bytes"], row["steady_max_allocated_bytes"])
        reserved = max(row["first_step_max_reserved_bytes"], row["steady_max_reserved_bytes"])
        row["measured_over_predicted"] = peak / estimate.training_peak_bytes
        row["reserved_fits_budget"] = reserved <= budget_gb * 1e9
    return row


def voxelmorph_row(shape: Sequence[int], device: str, steps: int, batch_size: int = 1) -> dict[str, Any]:
    """The VoxelMorph baseline's bf16 training throughput at the same shape."""
    row = {"budget_gb": None, "network": "VoxelMorph", "architecture": voxelmorph_architecture()}
    row.update(measure_training(voxelmorph_architecture(), shape, batch_size, device, steps))
    return row


# -- inference -----------------------------------------------------------------------------------------------
def inference_row(plan: ConfigurationPlan, shape: Sequence[int], device: str, pairs: int = 2) -> dict[str, Any]:
    """Seconds per pair of ``nnRegPredictor.predict_pair`` on ``device`` (one warm-up pair not counted)."""
    from nnreg.inference.predictor import nnRegPredictor

    torch.manual_seed(0)
    network = build_network(plan.architecture)
    predictor = nnRegPredictor(device=device).manual_initialization(network, plan, configuration_name="3d_fullres")
    rng = np.random.default_rng(0)
    images = [(rng.random(tuple(shape)) * 255).astype(np.float32) for _ in range(2)]
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    field = predictor.predict_pair(images[0], images[1])
    synchronize(torch.device(device))
    start = time.perf_counter()
    for _ in range(pairs):
        field = predictor.predict_pair(images[1], images[0])
    synchronize(torch.device(device))
    seconds = (time.perf_counter() - start) / max(1, pairs)
    cuda = torch.device(device).type == "cuda"
    row = {"network": describe_architecture(plan.architecture), "shape": [int(s) for s in shape],
           "pairs_timed": int(pairs), "seconds_per_pair": seconds, "field_shape": list(field.shape),
           "max_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None}
    del predictor, network
    if cuda:
        torch.cuda.empty_cache()
    return row


# -- torchrun ------------------------------------------------------------------------------------------------
def write_tiny_dataset(root: Path, shape: Sequence[int] = (32, 40, 32), n_train: int = 6, n_val: int = 2) -> Path:
    """A Learn2Reg-layout dataset of smooth synthetic 'brains' (no labels), ``dataset.json`` included."""
    from scipy import ndimage

    from nnreg.dataset.image_io import Geometry, write_image

    shape = tuple(int(s) for s in shape)
    geometry = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = np.sqrt((grid ** 2).sum(0)) < 0.85
    rng = np.random.default_rng(0)
    training, validation = [], []
    for i in range(n_train + n_val):
        split = "Tr" if i < n_train else "Val"
        name = f"GPUCHECK_{i:04d}_0000.nii.gz"
        image = ndimage.gaussian_filter(rng.random(shape), 2.0)
        image = (image - image.min()) / (image.max() - image.min()) * 200.0 + 40.0
        write_image((image * inside).astype(np.float32), geometry, root / f"images{split}" / name)
        (training if split == "Tr" else validation).append(f"./images{split}/{name}")
    pairs = [{"fixed": f, "moving": m} for f in validation for m in validation if f != m]
    meta = {"name": root.name, "pairings": "unpaired", "provided_data": {"0": ["image"]}, "modality": {"0": "T1w"},
            "labels": {}, "tensorImageSize": {"0": "3D"}, "tensorImageShape": {"0": list(shape)},
            "numTraining": n_train, "training": [{"image": t} for t in training], "numValidation": len(pairs),
            "validation": pairs}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def _torchrun(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 1 <args>`` (``python -m torch.distributed.run`` = ``torchrun``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)


def torchrun_resume_row(device: str, workdir: Path | None = None, tiny_network: bool = False) -> dict[str, Any]:
    """Plan + preprocess a tiny dataset, train 2 epochs under torchrun, resume with ``--c`` to epoch 3."""
    from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        raw, pre, results = root / "raw", root / "preprocessed", root / "results"
        write_tiny_dataset(raw / "Dataset990_GPUCheck")
        plan_and_preprocess(PlanAndPreprocessOptions(
            dataset="990", raw=str(raw), preprocessed=str(pre), configurations=("3d_fullres",), num_processes=0,
            planner=PlannerSettings(device="cuda" if torch.device(device).type == "cuda" else "cpu",
                                    memory_target_gb=8.0)))
        plans_path = pre / "Dataset990_GPUCheck" / "nnRegPlans.json"
        if tiny_network:
            plans = json.loads(plans_path.read_text())
            for config in plans["configurations"].values():
                config["architecture"]["kwargs"].update(TINY_TRAINING_ARCHITECTURE)
                config["batch_size"] = 1
            plans_path.write_text(json.dumps(plans, indent=2))
        env = {**os.environ, "nnReg_raw": str(raw), "nnReg_preprocessed": str(pre), "nnReg_results": str(results)}
        common = ["-m", "nnreg.cli.train", "990", "0", "--device", torch.device(device).type,
                  "--iterations-per-epoch", "3", "--val-pairs", "1", "--num-workers", "0",
                  "--checkpoint-every", "1", "--no-final-validation"]
        first = _torchrun([*common, "--epochs", "2"], env, root)
        second = _torchrun([*common, "--epochs", "3", "--c"], env, root) if first.returncode == 0 else None
        fold = next(results.glob("Dataset990_GPUCheck/*/fold_0"), None)
        epoch = None
        if fold is not None and (fold / "checkpoint_final.pth").is_file():
            epoch = int(torch.load(fold / "checkpoint_final.pth", map_location="cpu",
                                   weights_only=True)["current_epoch"])
        resume_output = "" if second is None else second.stdout + second.stderr
        row = {"device": torch.device(device).type, "first_rc": first.returncode,
               "resume_rc": None if second is None else second.returncode, "final_epoch": epoch,
               "resumed": "continuing from" in resume_output and "(epoch 2)" in resume_output and epoch == 3,
               "seconds": time.perf_counter() - start}
        failed = second if second is not None and second.returncode else first if first.returncode else None
        if failed is not None:
            row["stderr_tail"] = failed.stderr[-2000:]
    return row


def ddp_step_row(device: str) -> dict[str, Any]:
    """Run :func:`_ddp_worker` under torchrun (world size 1): a process group on the device's backend, one DDP step."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        result = _torchrun([str(Path(__file__).resolve()), "--ddp-worker", str(out), "--device", device],
                           dict(os.environ), Path(tmp))
        row = json.loads(out.read_text()) if out.is_file() else {}
    row.update({"rc": result.returncode, "seconds": time.perf_counter() - start})
    if result.returncode:
        row["stderr_tail"] = result.stderr[-2000:]
    return row


def _ddp_worker(out: Path, device: str) -> None:
    """Inside torchrun: join the group, wrap a small network in DDP, compare one step's gradients with plain ones."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from nnreg.training.distributed import backend_for

    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(torch_device)
    backend = backend_for(torch_device)
    dist.init_process_group(backend)
    try:
        arch = {"network_class": "CascadeRegNet", "kwargs": dict(TINY_TRAINING_ARCHITECTURE)}
        torch.manual_seed(0)
        plain = build_network(arch).to(torch_device)
        wrapped_net = build_network(arch).to(torch_device)
        wrapped_net.load_state_dict(plain.state_dict())
        ddp = DistributedDataParallel(wrapped_net, device_ids=[torch_device.index] if torch_device.type == "cuda"
                                      else None)
        loss_fn = DeepSupervisedRegistrationLoss(1.0, 6.0, 5, True)
        moving, fixed = _synthetic_batch(1, (16, 16, 16), torch_device)
        for net in (plain, ddp):
            loss, _ = loss_fn(moving, fixed, net(moving, fixed))
            loss.backward()
        diff = max(float((a.grad - b.grad).abs().max()) for a, b in zip(plain.parameters(), wrapped_net.parameters()))
        t = torch.ones(1, device=torch_device)
        dist.all_reduce(t)
        out.write_text(json.dumps({"backend": backend, "world_size": dist.get_world_size(),
                                   "all_reduce": float(t.item()), "max_grad_difference": diff}))
        # drop the DDP reducer (and its communication hooks) before the group goes: a reducer outliving the
        # group aborted the process at exit once in the test suite ("terminate called without an active exception")
        del ddp, wrapped_net
        dist.barrier()
    finally:
        dist.destroy_process_group()


# -- report --------------------------------------------------------------------------------------------------
def _gb(value: Any) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def table(report: dict[str, Any]) -> str:
    """Markdown tables of the report (pasted into documentation/benchmarks.md when run on a GPU)."""
    lines = [f"device: {report['device']}  torch {report['torch']}", "",
             "| budget GB | planned network | batch | predicted peak GB | usable GB | max allocated GB (1st / steady) | "
             "max reserved GB (1st / steady) | meas/pred | steps/s | pairs/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        alloc = f"{_gb(r.get('first_step_max_allocated_bytes'))} / {_gb(r.get('steady_max_allocated_bytes'))}"
        res = f"{_gb(r.get('first_step_max_reserved_bytes'))} / {_gb(r.get('steady_max_reserved_bytes'))}"
        ratio = r.get("measured_over_predicted")
        sps, pps = r.get("steps_per_second"), r.get("pairs_per_second")
        lines.append(f"| {r['budget_gb'] if r['budget_gb'] is not None else '-'} | {r['network']} | "
                     f"{r['batch_size']} | {_gb(r.get('predicted_training_peak_bytes'))} | "
                     f"{_gb(r.get('usable_bytes'))} | {alloc} | {res} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {'-' if sps is None else f'{sps:.3f}'} | "
                     f"{'-' if pps is None else f'{pps:.3f}'} |")
    lines += ["", "| inference network | shape | s / pair |", "|---|---|---|"]
    for r in report["inference"]:
        lines.append(f"| {r['network']} | {'x'.join(map(str, r['shape']))} | {r['seconds_per_pair']:.2f} |")
    t, d = report.get("torchrun"), report.get("ddp")
    if t:
        lines.append(f"\ntorchrun --nproc_per_node 1: train rc {t['first_rc']}, resume (--c) rc {t['resume_rc']}, "
                     f"final epoch {t['final_epoch']}, resumed: {t['resumed']}")
    if d:
        lines.append(f"DDP world size 1 on {d.get('backend')}: rc {d['rc']}, max gradient difference vs plain "
                     f"{d.get('max_grad_difference')}")
    return "\n".join(lines)


def run_check(device: str, budgets: Sequence[float], shape: Sequence[int], steps: int, inference_pairs: int,
              torchrun: bool = True, tiny_network: bool = False) -> dict[str, Any]:
    """Every piece on ``device``; returns the report dict."""
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.device(device).type == "cuda"
                              else "cpu", "torch": torch.__version__, "shape": list(shape), "budgets_gb": list(budgets)}
    start = time.perf_counter()
    report["training"] = [memory_row(b, shape, device, steps) for b in budgets]
    for r in report["training"]:
        logger.info("budget %s GB: %s batch %d", r["budget_gb"], r["network"], r["batch_size"])
    report["training"].append(voxelmorph_row(shape, device, steps))
    report["inference"] = []
    for b in budgets:
        plan = plan_lumir(b, shape, "cuda" if torch.device(device).type == "cuda" else "cpu")
        report["inference"].append({"budget_gb": b, **inference_row(plan, shape, device, inference_pairs)})
    if torchrun:
        report["torchrun"] = torchrun_resume_row(device, tiny_network=tiny_network)
        report["ddp"] = ddp_step_row(device)
    report["seconds"] = time.perf_counter() - start
    return report


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected HxWxD, got {text!r}")
    return parts[0], parts[1], parts[2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
    parser.add_argument("--budgets", type=float, nargs="+", default=[24.0, 80.0], help="GPU memory budgets (GB).")
    parser.add_argument("--shape", type=parse_shape, default=LUMIR_SHAPE, help="Image shape (default 160x224x192).")
    parser.add_argument("--steps", type=int, default=3, help="Timed training steps per network.")
    parser.add_argument("--inference-pairs", type=int, default=2, help="Timed pairs per planned network.")
    parser.add_argument("--no-torchrun", action="store_true", help="Skip the torchrun resume and DDP pieces.")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="Run every piece on the CPU at 16x16x16 with 1 step (a test of the script, no numbers).")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.ddp_worker is not None:
        _ddp_worker(args.ddp_worker, args.device)
        return 0
    if args.cpu_smoke:
        report = run_check("cpu", [1.0], SMOKE_SHAPE, 1, 1, not args.no_torchrun, tiny_network=True)
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device is available (this check needs a GPU; --cpu-smoke runs its pieces on "
                  "the CPU)", file=sys.stderr)
            return NO_CUDA_EXIT
        report = run_check("cuda", args.budgets, args.shape, args.steps, args.inference_pairs, not args.no_torchrun)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))
    ok = all(r["finite"] for r in report["training"])
    if "torchrun" in report:
        ok = ok and report["torchrun"]["resumed"] and report["ddp"]["rc"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
