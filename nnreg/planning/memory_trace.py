"""Count the live bytes of a traced PyTorch program over time, without allocating real tensor data.

:class:`LiveBytesTracker` is a ``TorchDispatchMode`` meant to run inside ``FakeTensorMode``: every op output's
storage is counted when it first appears and uncounted when it is freed. Frees are observed with a
``weakref.finalize`` on the storage's Python object. PyTorch preserves that object for as long as C++ holds the
storage (autograd's saved tensors included), so the finalizer fires at the true free time, not when Python drops
its last reference (checked in ``tests/planning/test_memory_trace.py``). ``.item()`` on a fake tensor has no
value; the tracker answers it with a neutral constant so code that logs or branches on scalars still runs.

Kernels also allocate buffers the dispatcher never sees. :func:`hidden_workspace_bytes` models the one that
matters on CPUs: oneDNN (the default CPU convolution backend) computes in channel-blocked layouts and reorders
plain tensors into padded blocked copies (channels rounded up to 16 with AVX-512, 8 otherwise). The model —
forward ``max(src, dst)``, backward-data ``diff_dst + diff_src``, backward-weights ``src + diff_dst``, each
padded — was derived from oneDNN's primitives and checked per op against the process's peak RSS (see
documentation/planner.md). For CUDA the model assumes a cuDNN workspace as large as the largest operand
(not validated on this machine: no GPU).

On CPUs the allocations (tensors and workspaces, in order) also drive :class:`GlibcMallocModel`, so the peak is
the peak *resident* memory glibc's malloc would hold, not only the peak of live tensors.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nnreg.planning.allocator import GlibcMallocModel

_aten = torch.ops.aten
SCALAR_STANDIN = 0.25      # what ``.item()`` returns during a trace (PReLU's initial slope; any finite value works)
CUDA_BLOCK = 512           # the CUDA caching allocator rounds every block up to a multiple of this


def channel_block() -> int:
    """oneDNN's channel block on this CPU: 16 with AVX-512, else 8."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if "AVX512" in capability else 8


def _padded_bytes(shape: Any, itemsize: int, block: int) -> int:
    dims = [int(s) for s in shape]
    if len(dims) >= 2:
        dims[1] = math.ceil(dims[1] / block) * block
    return math.prod(dims) * itemsize


def _conv_output_shape(x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any) -> list[int]:
    out = [int(x.shape[0]), int(weight.shape[0])]
    for i, n in enumerate(x.shape[2:]):
        k = int(weight.shape[2 + i])
        out.append((int(n) + 2 * int(padding[i]) - int(dilation[i]) * (k - 1) - 1) // int(stride[i]) + 1)
    return out


def hidden_workspace_bytes(func: Any, args: tuple, block: int) -> int:
    """Bytes a convolution kernel allocates internally (invisible to dispatch) while it runs."""
    if func is _aten.convolution.default:
        x, weight = args[0], args[1]
        item = x.element_size()
        src = _padded_bytes(x.shape, item, block)
        dst = _padded_bytes(_conv_output_shape(x, weight, args[3], args[4], args[5]), item, block)
        return max(src, dst)
    if func is _aten.convolution_backward.default:
        grad_out, x, mask = args[0], args[1], args[-1]
        item = x.element_size()
        src = _padded_bytes(x.shape, item, block)
        diff_dst = _padded_bytes(grad_out.shape, item, block)
        data = diff_dst + src if mask[0] else 0          # diff_src has the shape of src
        weights = src + diff_dst if mask[1] else 0
        return max(data, weights)
    return 0


class LiveBytesTracker(TorchDispatchMode):
    """Live bytes of storages created inside the mode, their peak (plus hidden kernel workspaces) and where it was.

    ``tensor_peak``: peak of live tensors + workspaces. ``peak``: the same as the allocator holds it — on CPU
    through :class:`GlibcMallocModel` (RSS), on CUDA with the caching allocator's 512-byte rounding.
    ``device``: ``"cpu"`` (oneDNN workspaces) or ``"cuda"`` (cuDNN workspace assumption).
    Storages that exist before the mode (parameters, optimizer state, the batch) are excluded via ``resident``.
    """

    def __init__(self, device: str = "cpu", resident: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.device = device
        self.block = channel_block()
        self.live = 0
        self.peak = 0
        self.peak_op = ""
        self.ops = 0
        self.tensor_peak = 0
        self.malloc = GlibcMallocModel() if device == "cpu" else None
        self._sizes: dict[int, int] = {}
        self._resident = {id(t.untyped_storage()) for t in (resident or [])}
        self._keep_resident = [t.untyped_storage() for t in (resident or [])]   # ids stay unique while tracing

    def _round(self, nbytes: int) -> int:
        if self.device == "cuda":
            return -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK
        return nbytes

    def _freed(self, key: int) -> None:
        nbytes = self._sizes.pop(key, 0)
        self.live -= nbytes
        if self.malloc is not None:
            self.malloc.free(key)

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._sizes or key in self._resident:
            return
        nbytes = self._round(storage.nbytes())
        self._sizes[key] = nbytes
        self.live += nbytes
        if self.malloc is not None:
            self.malloc.allocate(key, nbytes)
        weakref.finalize(storage, self._freed, key)

    def _workspace(self, func: Any, args: tuple) -> int:
        if self.device == "cuda":   # assumed cuDNN workspace: the largest operand, no channel padding
            if func is _aten.convolution.default:
                return hidden_workspace_bytes(func, args, 1)
            if func is _aten.convolution_backward.default:
                return max(a.untyped_storage().nbytes() for a in args[:2])
            return 0
        return hidden_workspace_bytes(func, args, self.block)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops += 1
        if func is _aten._local_scalar_dense.default:
            return SCALAR_STANDIN
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                self._count(t)
        workspace = self._workspace(func, args)
        self.tensor_peak = max(self.tensor_peak, self.live + workspace)
        if self.malloc is not None:   # the workspace is malloc'ed after the outputs and freed before returning
            self.malloc.allocate(-1, workspace)
            current = self.malloc.resident
            self.malloc.free(-1)
        else:
            current = self.live + workspace
        if current > self.peak:
            self.peak, self.peak_op = current, str(func)
        return out


def run_traced(program: Callable[[], Any], device: str, resident: list[torch.Tensor]) -> LiveBytesTracker:
    """Run ``program`` (already inside ``FakeTensorMode``) under a fresh tracker and return the tracker."""
    tracker = LiveBytesTracker(device, resident)
    with tracker:
        program()
    return tracker
