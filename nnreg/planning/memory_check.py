"""Measure the real peak memory of one training step in a fresh subprocess, to validate the memory model.

The child process builds the network, Adam and the trainer loss for real and runs one *warm-up* step at a tiny
shape first. The baseline is then taken after the warm-up, after allocating the batch at the measured shape:
it holds what the prediction's ``resident`` part and the process itself hold — interpreter, the pages of
libtorch/oneDNN code the step touches, thread pools, parameters, Adam's moments and the batch — and excludes
nothing the step itself allocates. The measurement is the growth of the peak over that baseline:

* CPU: ``VmHWM`` (peak RSS, reset with ``/proc/self/clear_refs``) minus the RSS at the baseline;
* CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` at the baseline.

Both are compared with :attr:`MemoryEstimate.step_bytes`; parameters, Adam state and batch are exact byte
counts on both sides. Run as ``python -m nnreg.planning.memory_check '<json request>'``.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any, Mapping, Sequence

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """Peak resident set size (``VmHWM``) since start or the last :func:`reset_peak_rss`."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _measure(request: Mapping[str, Any]) -> dict[str, Any]:
    """In the child: warm up, take the baseline, run one step, report the growth of the peak."""
    import torch

    from nnreg.losses import DeepSupervisedRegistrationLoss
    from nnreg.networks import build_network
    from nnreg.planning.memory import _training_step

    device = request.get("device", "cpu")
    torch.manual_seed(0)
    model = build_network(request["architecture"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = DeepSupervisedRegistrationLoss()
    batch, shape = int(request["batch_size"]), [int(s) for s in request["shape"]]
    divisor = int(getattr(model, "divisor", 1))
    tiny = [max(divisor, 16)] * 3
    warm = torch.rand(batch, 1, *tiny, device=device)
    _training_step(model, optimizer, loss_fn, warm, warm.flip(2).contiguous(), device)
    del warm
    moving = torch.rand(batch, 1, *shape, device=device)
    fixed = torch.rand(batch, 1, *shape, device=device)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = rss_bytes()
        reset_peak_rss()
    _training_step(model, optimizer, loss_fn, moving, fixed, device)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    return {"baseline_bytes": baseline, "peak_bytes": peak, "measured_bytes": peak - baseline}


def measure_training_step(architecture: Mapping[str, Any], shape: Sequence[int], batch_size: int = 1,
                          device: str = "cpu", env: Mapping[str, str] | None = None,
                          timeout: float = 1800.0) -> dict[str, Any]:
    """Run :func:`_measure` in a fresh Python process (``env`` adds variables, e.g. malloc settings)."""
    request = {"architecture": dict(architecture), "shape": [int(s) for s in shape],
               "batch_size": int(batch_size), "device": device}
    result = subprocess.run([sys.executable, "-m", "nnreg.planning.memory_check", json.dumps(request)],
                            capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
