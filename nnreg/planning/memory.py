"""The memory model: peak bytes of a training step and of inference, predicted from the architecture itself.

Instead of nnU-Net's proxy (sum of convolution outputs scaled from one reference run), the real network, the
real trainer loss (:class:`nnreg.losses.DeepSupervisedRegistrationLoss`: deep-supervised local NCC, window 9,
plus the gradient penalty, with the spatial transformer at every level), gradient clipping and Adam are run on
fake tensors (``FakeTensorMode``: shapes and dtypes, no data) under :class:`LiveBytesTracker`, which follows
every storage from its allocation to its free. What is measured is a *steady-state* step, mirroring
``nnreg.training.Trainer.train_step`` (zero_grad(set_to_none) → forward (bf16 autocast on CUDA) → loss →
backward → clip → Adam step): parameters, Adam's two moments and the batch are resident before it starts; the
step adds activations, saved tensors, integration/warping/bilateral/loss intermediates, gradients, kernel
workspaces and optimizer temporaries. Inference is one pair, autograd off, as the predictor runs it.

Results are cached in memory and in a JSON file (``nnReg_memory_cache`` or ``~/.cache/nnreg/memory_model.json``)
keyed by architecture, shape, batch size, target device and a fingerprint of the code that decides memory
(torch version, CPU channel block, the network/loss/spatial sources), so stale entries are never reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

import nnreg
from nnreg.losses import DeepSupervisedRegistrationLoss
from nnreg.networks import build_network
from nnreg.planning.memory_trace import channel_block, run_traced
from nnreg.spatial.grid import clear_grid_cache
from nnreg.utilities.files import read_json, write_json

logger = logging.getLogger(__name__)

CACHE_ENV = "nnReg_memory_cache"
GRAD_CLIP_NORM = 12.0                 # the trainer's default; clipping allocates a few parameter-sized temporaries
_CODE_PACKAGES = ("networks", "losses", "spatial")


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted memory (bytes) and compute (FLOPs) of one architecture at one shape and batch size."""

    shape: tuple[int, ...]
    batch_size: int
    device: str
    parameters: int
    parameter_bytes: int
    optimizer_bytes: int            # Adam's exp_avg + exp_avg_sq (2x parameters), resident
    batch_bytes: int                # moving + fixed of one batch, resident during the step
    step_bytes: int                 # peak of what the step itself allocates (activations, grads, workspaces, ...)
    step_tensor_bytes: int          # the same without the allocator's retention (= step_bytes on CUDA)
    inference_bytes: int            # peak of what one inference forward allocates (its output field included)
    flops_training_step: int        # forward + backward (torch.utils.flop_counter: convs, matmuls, attention)
    flops_inference: int
    peak_op: str                    # the op at which the training peak occurred (for diagnosis)

    @property
    def resident_bytes(self) -> int:
        """Parameters + Adam state + batch: memory held across steps."""
        return self.parameter_bytes + self.optimizer_bytes + self.batch_bytes

    @property
    def training_peak_bytes(self) -> int:
        """Peak of a training step: resident memory plus the step's own peak."""
        return self.resident_bytes + self.step_bytes

    @property
    def inference_peak_bytes(self) -> int:
        """Peak of predicting one pair: parameters + the pair + the forward's own peak."""
        return self.parameter_bytes + 2 * self.batch_bytes // self.batch_size + self.inference_bytes

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MemoryEstimate":
        return cls(**{**d, "shape": tuple(d["shape"])})


def _autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """The trainer's bf16 autocast on CUDA, reproduced with CPU autocast (fake tensors cannot be CUDA here)."""
    if device == "cuda":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: DeepSupervisedRegistrationLoss,
                   moving: torch.Tensor, fixed: torch.Tensor, device: str) -> None:
    """``Trainer.train_step``: output and loss stay referenced until the step returns, as there."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device):
        output = model(moving, fixed)
    loss, _ = loss_fn(moving, fixed, output)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    del output, loss


def _initialise_adam(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Create Adam's state (first step on zero gradients) so the traced step is a steady-state one."""
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]


def trace_memory(architecture: Mapping[str, Any], shape: Sequence[int], batch_size: int = 1,
                 device: str = "cpu") -> MemoryEstimate:
    """Trace one training step and one inference forward on fake tensors (uncached; see :func:`estimate_memory`)."""
    shape = tuple(int(s) for s in shape)
    clear_grid_cache()   # identity grids made under FakeTensorMode must never leak into real runs (and vice versa)
    try:
        with FakeTensorMode():
            model = build_network(architecture)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=1e-4, foreach=device == "cuda")
            state = _initialise_adam(optimizer, params)
            loss_fn = DeepSupervisedRegistrationLoss()
            moving = torch.rand(batch_size, 1, *shape)
            fixed = torch.rand(batch_size, 1, *shape)
            counter = FlopCounterMode(display=False)
            with counter:
                step = run_traced(lambda: _training_step(model, optimizer, loss_fn, moving, fixed, device), device,
                                  [*params, *state, moving, fixed])
            train_flops = counter.get_total_flops()
            clear_grid_cache()
            pair = (moving[:1].clone(), fixed[:1].clone())
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                inference = run_traced(lambda: model(*pair), device, [*params, *pair])
            inference_flops = counter.get_total_flops()
            parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            optimizer_bytes = sum(t.numel() * t.element_size() for t in state if t.dim() > 0)
            batch_bytes = 2 * moving.numel() * moving.element_size()
            parameters = sum(p.numel() for p in params)
    finally:
        clear_grid_cache()
    return MemoryEstimate(shape=shape, batch_size=int(batch_size), device=device, parameters=int(parameters),
                          parameter_bytes=int(parameter_bytes), optimizer_bytes=int(optimizer_bytes),
                          batch_bytes=int(batch_bytes), step_bytes=int(step.peak),
                          step_tensor_bytes=int(step.tensor_peak),
                          inference_bytes=int(inference.peak), flops_training_step=int(train_flops),
                          flops_inference=int(inference_flops), peak_op=step.peak_op)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of everything that changes the traced memory: torch, the CPU block and the relevant sources."""
    digest = hashlib.sha256(f"{torch.__version__}|{channel_block()}".encode())
    root = Path(nnreg.__file__).parent
    files = [p for pkg in _CODE_PACKAGES for p in sorted((root / pkg).glob("*.py"))]
    files += sorted((root / "planning").glob("memory*.py")) + [root / "planning" / "allocator.py"]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(architecture: Mapping[str, Any], shape: Sequence[int], batch_size: int, device: str) -> str:
    """A stable key: code fingerprint + the canonical JSON of what is traced."""
    payload = json.dumps({"architecture": architecture, "shape": [int(s) for s in shape],
                          "batch_size": int(batch_size), "device": device}, sort_keys=True)
    return f"{code_fingerprint()}:{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def prediction_key(architecture: Mapping[str, Any], shape: Sequence[int], batch_size: int,
                   device: str) -> dict[str, Any]:
    """What a plan's predictions were computed for (so a hand-edited plan can be re-predicted)."""
    arch = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode()).hexdigest()[:12]
    return {"architecture": arch, "shape": [int(s) for s in shape], "batch_size": int(batch_size), "device": device}


def cache_path() -> Path:
    """The on-disk cache file (``nnReg_memory_cache`` overrides the default under ``~/.cache``)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "nnreg" / "memory_model.json"


_memory_cache: dict[str, MemoryEstimate] = {}


def _disk_entries(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path) if path.is_file() else {}
    except Exception:   # a corrupt cache is only a cache: rebuild it
        logger.warning("memory model cache %s is unreadable; starting a new one", path)
        data = {}
    return data if isinstance(data, dict) else {}


def estimate_memory(architecture: Mapping[str, Any], shape: Sequence[int], batch_size: int = 1,
                    device: str = "cpu", use_cache: bool = True) -> MemoryEstimate:
    """:func:`trace_memory`, cached in this process and on disk."""
    key = cache_key(architecture, shape, batch_size, device)
    if use_cache and key in _memory_cache:
        return _memory_cache[key]
    path = cache_path()
    entries = _disk_entries(path) if use_cache else {}
    if key in entries:
        estimate = MemoryEstimate.from_json(entries[key])
    else:
        estimate = trace_memory(architecture, shape, batch_size, device)
        logger.debug("traced %s at %s x%d on %s: %.2f GB", architecture.get("network_class"), list(shape),
                     batch_size, device, estimate.training_peak_bytes / 1e9)
        if use_cache:
            _store(path, key, estimate)
    _memory_cache[key] = estimate
    return estimate


def _store(path: Path, key: str, estimate: MemoryEstimate) -> None:
    """Merge one entry into the disk cache (re-read first: other processes may have added entries)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _disk_entries(path)
        entries[key] = estimate.to_json()
        write_json(entries, path)
    except OSError as exc:
        logger.warning("cannot write the memory model cache %s (%s); continuing without it", path, exc)


def clear_memory_cache() -> None:
    """Forget in-process results (the disk cache is left alone)."""
    _memory_cache.clear()


def iter_cached(path: Path | None = None) -> Iterator[tuple[str, MemoryEstimate]]:
    """Entries of the disk cache (for inspection and tests)."""
    for key, value in _disk_entries(path or cache_path()).items():
        yield key, MemoryEstimate.from_json(value)
