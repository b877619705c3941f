"""The training loader: consecutive sample indices from a resume position, loaded in worker processes.

One ``torch.utils.data.DataLoader`` lives for the whole run (workers start once, not every epoch) over the
indices ``[start, start + n)``; :attr:`PairLoader.position` counts the samples handed to the trainer, so a
checkpoint stores exactly where to continue (prefetched but unused samples are simply recomputed).
``num_workers=0`` loads in the trainer's process. A worker that raises has its traceback re-raised here as a
:class:`DataLoaderWorkerError`; a worker that dies without one (killed, out of memory, segfault) is named with a
hint, and ``faulthandler`` in every worker prints a segfault's Python stack to stderr.
"""
from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from typing import Any, Iterator

import torch

from nnreg.training.data.dataset import PairDataset, SampleLoadingError
from nnreg.utilities.cpus import usable_cpus
from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)

_OPEN_ENDED = 2 ** 62      # samples of an open-ended loader (``num_samples=None``): the trainer decides when to stop


class DataLoaderWorkerError(NnregError):
    """A data-loader worker failed; the message holds its traceback (or why none exists)."""

    exit_code = 3


def default_num_workers(device: torch.device, world_size: int = 1) -> int:
    """Workers per training process: loading is light next to a 3D registration step, so few are needed.

    Sized by the cores this process may use (affinity and cgroup quota, :func:`nnreg.utilities.cpus.usable_cpus`)."""
    cores = usable_cpus()
    if device.type == "cuda":
        return max(1, min(6, cores // max(1, world_size) - 1))
    return 1 if cores >= 2 else 0


def _worker_init(_: int) -> None:
    faulthandler.enable()
    torch.set_num_threads(1)


class PairLoader:
    """Batches ``{"fixed", "moving": (B, 1, H, W, D)}`` on ``device``, from sample ``start`` onwards."""

    def __init__(self, dataset: PairDataset, batch_size: int, start: int, num_samples: int | None, num_workers: int,
                 device: torch.device) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.position = int(start)
        self.device = device
        self.num_workers = int(num_workers)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            # spawn, not fork: the trainer has already decompressed blosc2 arrays (validation) with blosc2's
            # thread pool, and a forked child inherits its locks and hangs in its first decompression
            kwargs.update(worker_init_fn=_worker_init, prefetch_factor=2, multiprocessing_context="spawn",
                          persistent_workers=False)
        stop = start + (num_samples if num_samples is not None else _OPEN_ENDED)
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, sampler=range(start, stop), shuffle=False,
            num_workers=self.num_workers, pin_memory=device.type == "cuda", drop_last=True, **kwargs)
        self._iterator: Iterator[dict[str, Any]] | None = None

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next batch on the training device; raises :class:`DataLoaderWorkerError` if loading failed."""
        if self._iterator is None:
            self._iterator = self._start()
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise RuntimeError("the training loader ran out of samples (more iterations than planned)") from None
        except SampleLoadingError as exc:
            self.close()
            raise DataLoaderWorkerError(f"a training sample could not be loaded: {exc}") from exc
        except (RuntimeError, ConnectionError, EOFError, OSError) as exc:
            # RuntimeError: torch noticed the dead worker; the others: a batch the worker had queued could not be
            # fetched any more because its process (which shares the memory) is gone
            if self.num_workers == 0 or (isinstance(exc, RuntimeError) and "DataLoader worker" not in str(exc)):
                raise
            self.close()
            raise DataLoaderWorkerError(
                f"a data-loader worker died ({type(exc).__name__}: {exc}) without a Python exception (killed, out "
                f"of memory or a crash; a crash's stack is printed above by faulthandler). Re-run with "
                f"--num-workers 0 to load in this process and see the error directly.") from exc
        self.position += self.batch_size
        non_blocking = self.device.type == "cuda"
        return {k: batch[k].to(self.device, non_blocking=non_blocking) for k in ("fixed", "moving")}

    def _start(self) -> Iterator[dict[str, Any]]:
        """Start the workers. torch installs a SIGCHLD handler that raises a worker's death *asynchronously*,
        anywhere in the training step; the previous handler is put back, so a dead worker is reported inside
        :meth:`next_batch` instead (torch's own liveness check while waiting for data, every few seconds)."""
        restore = self.num_workers > 0 and hasattr(signal, "SIGCHLD") and \
            threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGCHLD) if restore else None
        iterator = iter(self._loader)
        if restore:
            signal.signal(signal.SIGCHLD, previous if previous is not None else signal.SIG_DFL)
        return iterator

    def close(self) -> None:
        """Stop the worker processes."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
