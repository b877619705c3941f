"""Cost of an architecture at an input shape: parameters, FLOPs, activation memory — without running it.

Everything is traced on the ``meta`` device (shapes only, no data, no memory), so a full-size 160×224×192
training step is costed in about a second. Reported:

* ``parameters``: trainable parameter count; ``parameter_bytes`` at the model's dtype.
* ``flops_forward``: FLOPs of one inference forward (autograd off, the path the predictor runs; LK branches
  merged), and ``flops_training_step``: forward + backward with autograd on (``torch.utils.flop_counter``
  counts convolutions, matmuls and attention; grid sampling, pooling and norms are memory-bound and not counted).
* ``activation_bytes``: bytes autograd saves for the backward pass of one training forward (saved-tensor hooks,
  each storage counted once, parameters excluded) — the dominant training memory term.
* ``inference_peak_bytes``: peak of simultaneously live tensors created during an inference forward (inputs,
  outputs kept by the caller and parameters excluded) — the network's share of the predictor's peak memory.

The planner's memory model builds on these numbers; the benchmark compares them with measured RSS.
"""
from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nnreg.networks.build import build_network
from nnreg.spatial import clear_grid_cache


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage._cdata, storage.nbytes()


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes of storages created inside the mode that are still referenced; records the peak."""

    def __init__(self, external: set[int]) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}
        self._external = external  # storages of inputs and parameters: views of them allocate nothing

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch signature)
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        for t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            key, nbytes = _storage_key(t)
            if key in self._external:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key, nbytes)
        return out


def _inputs(shape: Sequence[int], batch_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    size = (batch_size, 1, *[int(s) for s in shape])
    return torch.empty(size, device=device), torch.empty(size, device=device)


def _training_loss(out: Any) -> torch.Tensor:
    """A scalar touching every output the trainer uses (final field and each level's velocity/field)."""
    loss = out.displacement.sum()
    for level in out.levels:
        loss = loss + level.velocity.square().sum() + level.displacement.sum()
    return loss


def network_cost(
    architecture: Mapping[str, Any], shape: Sequence[int], batch_size: int = 1, training: bool = True
) -> dict[str, Any]:
    """Parameters, FLOPs and activation memory of ``architecture`` for inputs ``(batch_size, 1, *shape)``.

    ``training=False`` skips the backward trace (``flops_training_step`` and ``activation_bytes`` are None).
    """
    with torch.device("meta"):
        model = build_network(architecture)
    divisor = int(getattr(model, "divisor", 1))
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    param_keys = {_storage_key(p)[0] for p in model.parameters()}

    moving, fixed = _inputs(shape, batch_size, "meta")
    clear_grid_cache()  # the identity grids are part of a fresh predictor's peak: count them every time
    tracker = _LiveBytes(param_keys | {_storage_key(moving)[0], _storage_key(fixed)[0]})
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        with tracker:
            out = model(moving, fixed)
        del out
    flops_forward = counter.get_total_flops()

    result: dict[str, Any] = {
        "network_class": architecture["network_class"],
        "shape": [int(s) for s in shape],
        "batch_size": batch_size,
        "divisor": divisor,
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "flops_forward": int(flops_forward),
        "inference_peak_bytes": int(tracker.peak),
        "flops_training_step": None,
        "activation_bytes": None,
    }
    if not training:
        return result

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage_key(t)
        if key not in param_keys:
            saved[key] = nbytes
        return t

    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(moving, fixed)
        _training_loss(out).backward()
    result["flops_training_step"] = int(counter.get_total_flops())
    result["activation_bytes"] = int(sum(saved.values()))
    return result
