"""Data-parallel training (PyTorch DDP): one process per GPU (NCCL) or per CPU share (gloo).

Processes come from ``--num-gpus N`` (spawned here, rendezvous on a free local port) or from ``torchrun`` (its
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` variables are used as they are). Only rank 0 writes files;
each rank draws its own pair stream (see ``nnreg.training.data.pairs``); DDP averages the gradients, so every rank
holds the same weights after every step. On the CPU the cores are shared out between the processes.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnreg.utilities.errors import ConfigurationError, NnregError
from nnreg.utilities.parallel import WorkerDiedError, how_it_ended, stop_processes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job (``world_size`` 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context_from_environment() -> DistributedContext | None:
    """The context ``torchrun`` set up, or None when not started by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return DistributedContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                              int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device, context: DistributedContext) -> torch.device:
    """This rank's device: ``cuda:<local_rank>`` on GPUs, the requested device otherwise."""
    if device.type == "cuda" and context.enabled:
        if context.local_rank >= torch.cuda.device_count():
            raise ConfigurationError(f"rank {context.rank} needs GPU {context.local_rank} but only "
                                     f"{torch.cuda.device_count()} are visible")
        return torch.device("cuda", context.local_rank)
    return device


def initialize(context: DistributedContext, device: torch.device) -> None:
    """Join the process group (env:// rendezvous) and share out CPU threads between local processes."""
    if not context.enabled:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), rank=context.rank, world_size=context.world_size)
    if device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))
        from nnreg.utilities.cpus import usable_cpus

        torch.set_num_threads(max(1, usable_cpus() // max(1, local)))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``obj`` (in rank order) on every rank."""
    if not (context.enabled and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(value: float, context: DistributedContext, device: torch.device) -> float:
    if not (context.enabled and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / context.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _end_with_parent(parent: int) -> None:
    """On Linux, ask the kernel to send this process SIGTERM when the process that spawned it dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``), so no rank trains on, orphaned, after its ``nnreg_train`` is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))   # 1 = PR_SET_PDEATHSIG
        except OSError:     # no glibc: the parent's own shutdown (spawn) is then the only guard
            pass
    if os.getppid() != parent:      # the parent died before the request took effect
        os._exit(128 + int(signal.SIGTERM))


def _spawned_entry(rank: int, world_size: int, fn: Callable[..., Any], args: tuple[Any, ...], parent: int) -> None:
    _end_with_parent(parent)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size))
    try:
        fn(*args)
    except NnregError as exc:   # a user error: one line from the rank that saw it, no traceback wall
        logging.getLogger("nnreg").error("nnreg: error (rank %d): %s", rank, exc)
        raise SystemExit(exc.exit_code) from None


#: ``-W`` filter for the processes that ``spawn`` starts, multiprocessing's resource tracker among them: a rank stopped
#: by SIGTERM (Ctrl-C, ``kill``, a dead sibling) dies without unregistering the semaphores of its data workers' queues,
#: and the tracker, which then unlinks them itself, printed a two-line "leaked semaphore objects" warning after
#: ``nnreg: terminated``. The clean-up is the same; only the noise goes.
TRACKER_WARNINGS = "ignore:resource_tracker:UserWarning"


def spawn(fn: Callable[..., Any], world_size: int, args: tuple[Any, ...]) -> None:
    """Run ``fn(*args)`` in ``world_size`` new processes with ranks 0..N-1; fail if any of them fails."""
    if TRACKER_WARNINGS not in sys.warnoptions:   # passed on as -W to the tracker, which starts with the ranks
        sys.warnoptions.append(TRACKER_WARNINGS)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    context = mp.start_processes(_spawned_entry, args=(world_size, fn, args, os.getpid()), nprocs=world_size,
                                 join=False)
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        if exc.exit_code is not None and exc.exit_code < 0:      # killed: no message of its own
            raise WorkerDiedError(f"training process of rank {exc.error_index} {how_it_ended(exc.exit_code)}; "
                                  f"the other ranks were stopped") from None
        raise NnregError(f"training process of rank {exc.error_index} stopped with exit code {exc.exit_code} "
                         f"(its message is above)") from None
    except BaseException:       # Ctrl-C, SIGTERM (nnreg.cli.common), an error here: the ranks stop with us
        stop_processes(context.processes, grace=10.0)
        raise
