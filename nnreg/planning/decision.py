"""The memory-driven decision function: channel width, kernel size, finest levels, batch size from a budget.

Rules (documentation/planner.md explains the reasoning):

1. **Depth first, from the shape only**: the deepest cascade (≤ 5 levels) whose coarsest level keeps ≥ 8 voxels
   per axis. Depth is never traded for memory: each coarser level has 1/8 of the voxels of the one above.
2. **Then the richest architecture that fits at batch size 1**, scanning tiers in this order:
   full resolution, then the finest level skipped (the network runs at half resolution, the field is
   upsampled), then two levels skipped. Within a tier widths come from :data:`WIDTH_LADDER`, widest first,
   each tried with the large kernel (LK, K = 5) before the plain 3³ one. So memory is traded **width first,
   then LK, then resolution**: a tier stops at :data:`MIN_WIDTH` (half resolution comes before widths below 16,
   VoxelMorph's full-resolution width); only the last tier goes down to width 8.
3. **Then the batch size** grows while it fits, up to :data:`MAX_BATCH` (1 on CPUs: there a batch of two pairs
   takes twice as long, nothing runs in parallel that would otherwise idle).
4. **Time targets.** ``--device cpu``: the estimated seconds of one training step per pair (FLOPs / the CPU's
   throughput) ≤ ``cpu_seconds_per_pair`` (default 5 s). On every device, the CPU deployment configuration
   (``3d_halfres``) must register a pair in ≤ ``cpu_inference_seconds`` (default 15 s) on 2 cores, so a model
   trained on a GPU can still be run on a CPU in seconds. When nothing meets the targets, the smallest
   candidate that fits the memory is taken and the plan says so.
   **CPU trade order** (``cpu_trade_order``, default :data:`DEFAULT_CPU_TRADE_ORDER`): ``width-first`` keeps the
   output resolution of a configuration as long as it can: every tier goes down to width 8, and when even width 8
   misses the time target the tier is kept anyway if its step needs at most ``cpu_max_slowdown`` (default
   :data:`CPU_MAX_SLOWDOWN`) times the target — training steps are traded (fewer steps in the same wall time)
   before resolution. ``resolution-first`` is the GPU order (width ≥ 16 before half resolution, no slowdown),
   kept so the two orders can be compared at equal wall time (benchmarks/planner_ablation.py).
5. A budget too small for the smallest network (last tier, width 8, 3³ kernels, batch 1) is a
   :class:`NnregError` naming the minimum budget it would need.

Within a tier memory grows with width (and LK), so each tier is searched by bisection over its ordered list for
the first candidate that fits the memory; on a CPU the list is then scanned on for the first one that also meets
the time target. The chosen candidate is always traced at the exact planned shape and batch size.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from nnreg.networks import default_architecture
from nnreg.planning.memory import MemoryEstimate, estimate_memory, prediction_key
from nnreg.planning.planner import Decision, PlannerSettings
from nnreg.planning.topology import cascade_depth
from nnreg.utilities.errors import NnregError

logger = logging.getLogger(__name__)

WIDTH_LADDER = (8, 12, 16, 24, 32, 36, 48, 64)
MIN_WIDTH = 16                  # narrowest width before the next (coarser) tier is preferred
KERNELS = (5, 3)                # LK when affordable, else plain 3³
MAX_SKIP = 2                    # never estimate the field coarser than 1/4 of the input grid
CPU_TRADE_ORDERS = ("width-first", "resolution-first")
DEFAULT_CPU_TRADE_ORDER = "width-first"   # CPU: width (to 8), then training steps, then resolution
CPU_MAX_SLOWDOWN = 8.0          # width-first: a tier is kept while its cheapest step is <= this x the time target
MAX_BATCH = {"cuda": 4, "cpu": 1}
USABLE_FRACTION = 0.9           # allocator reserve: CUDA caching-allocator fragmentation, glibc retention on CPU
PROCESS_OVERHEAD_GB = {"cuda": 0.5, "cpu": 0.5}   # CUDA context / interpreter + libtorch, outside the tensors
CPU_FLOPS_PER_THREAD = 25e9     # sustained conv throughput per core (documentation/planner.md)
CPU_SECONDS_PER_PAIR = 5.0      # default CPU time target of one training step per pair
REFERENCE_CPU_THREADS = 2       # the inference time target is for a 2-core machine (the LUMIR test phase's class)

Estimator = Callable[[dict[str, Any], list[int], int, str], MemoryEstimate]


@dataclass(frozen=True)
class Candidate:
    """One architecture choice: encoder width, kernel size, skipped finest levels."""

    width: int
    kernel: int
    skip: int

    def describe(self) -> str:
        res = ["full", "1/2", "1/4"][self.skip] + " res"
        return f"width {self.width}, kernel {self.kernel}, {res}"


def usable_bytes(settings: PlannerSettings) -> float:
    """The part of the budget tensors may use: minus the process overhead, times the allocator reserve."""
    overhead = PROCESS_OVERHEAD_GB.get(settings.device, 0.5)
    return max(0.0, settings.memory_target_gb - overhead) * USABLE_FRACTION * 1e9


def needed_budget_gb(estimate: MemoryEstimate, device: str) -> float:
    """The smallest budget (GB) under which ``estimate`` fits (inverse of :func:`usable_bytes`)."""
    return estimate.training_peak_bytes / USABLE_FRACTION / 1e9 + PROCESS_OVERHEAD_GB.get(device, 0.5)


def tiers(n_levels: int, narrowest_everywhere: bool = False, max_skip: int = MAX_SKIP) -> list[list[Candidate]]:
    """Candidates per resolution tier, richest first (see the module docstring, rule 2).

    ``narrowest_everywhere`` (the CPU's width-first order) lets every tier go down to width 8, not only the last;
    ``max_skip`` caps the skipped levels (``3d_fullres`` must stay finer than ``3d_halfres``).
    """
    max_skip = min(max_skip, MAX_SKIP, n_levels - 1)
    out = []
    for skip in range(max_skip + 1):
        floor = WIDTH_LADDER[0] if skip == max_skip or narrowest_everywhere else MIN_WIDTH
        widths = [w for w in reversed(WIDTH_LADDER) if w >= floor]
        out.append([Candidate(w, k, skip) for w in widths for k in KERNELS])
    return out


def cpu_trade_order(settings: PlannerSettings) -> str:
    """The CPU trade order of a planning run (``resolution-first`` is what every non-CPU device uses)."""
    if settings.device != "cpu":
        return "resolution-first"
    order = str(settings.extra.get("cpu_trade_order") or DEFAULT_CPU_TRADE_ORDER)
    if order not in CPU_TRADE_ORDERS:
        raise NnregError(f"unknown CPU trade order {order!r} (choose {' or '.join(CPU_TRADE_ORDERS)})")
    return order


def architecture_for(candidate: Candidate, n_levels: int) -> dict[str, Any]:
    """The plans ``architecture`` entry of a candidate (paper defaults for everything else)."""
    return default_architecture(n_levels, base_channels=candidate.width, kernel_size=candidate.kernel,
                                skip_levels=candidate.skip)


def cpu_inference_seconds(estimate: MemoryEstimate) -> float:
    """Estimated seconds to register one pair on a 2-core CPU (the network's inference FLOPs)."""
    return estimate.flops_inference / (CPU_FLOPS_PER_THREAD * REFERENCE_CPU_THREADS)


def cpu_seconds(estimate: MemoryEstimate, threads: int) -> float:
    """Estimated seconds of one training step per pair on this CPU."""
    return estimate.flops_training_step / estimate.batch_size / (CPU_FLOPS_PER_THREAD * max(1, threads))


class MemoryDrivenPlanner:
    """Callable decision function (``decide(box, settings) -> Decision``) following the module's rules."""

    __name__ = "memory_driven_decision"

    def __init__(self, estimator: Estimator | None = None) -> None:
        self.estimate: Estimator = estimator or (lambda a, s, b, d: estimate_memory(a, s, b, d))

    def __call__(self, box: list[int], settings: PlannerSettings) -> Decision:
        n_levels = cascade_depth(box)
        divisor = 2 ** (n_levels - 1)
        shape = [max(divisor, math.ceil(b / divisor) * divisor) for b in box]
        device = settings.device
        usable = usable_bytes(settings)
        threads = int(settings.extra.get("cpu_threads") or torch.get_num_threads())
        time_limit = float(settings.extra.get("cpu_seconds_per_pair", CPU_SECONDS_PER_PAIR))
        inference_limit = settings.extra.get("cpu_inference_seconds")
        order = cpu_trade_order(settings)
        width_first = order == "width-first"
        slowdown = float(settings.extra.get("cpu_max_slowdown") or CPU_MAX_SLOWDOWN) if width_first else 1.0
        max_skip = int(settings.extra.get("max_skip", MAX_SKIP))
        candidate_tiers = tiers(n_levels, narrowest_everywhere=width_first, max_skip=max_skip)
        smallest = candidate_tiers[-1][-1]
        tried: dict[Candidate, str] = {}
        measured: dict[Candidate, tuple[bool, float, float]] = {}

        def measure(c: Candidate) -> tuple[bool, float, float]:
            """(fits the memory, CPU training s/pair, CPU inference s on 2 cores) of a candidate, noted once."""
            if c not in measured:
                e = self.estimate(architecture_for(c, n_levels), shape, 1, device)
                measured[c] = (e.training_peak_bytes <= usable, cpu_seconds(e, threads), cpu_inference_seconds(e))
                ok, train_s, infer_s = measured[c]
                fast = device != "cpu" or train_s <= time_limit
                fast = fast and (inference_limit is None or infer_s <= inference_limit)
                tried[c] = (f"{c.describe()}: {e.training_peak_bytes / 1e9:.2f} GB"
                            + (f", {train_s:.1f} s/pair" if device == "cpu" else "")
                            + (f", {infer_s:.1f} s CPU inference" if inference_limit else "")
                            + ("" if ok and fast else " (too slow)" if ok else " (too large)"))
            return measured[c]

        def meets(c: Candidate, train_factor: float = 1.0) -> bool:
            ok, train_s, infer_s = measure(c)
            return (ok and (device != "cpu" or train_s <= time_limit * train_factor)
                    and (inference_limit is None or infer_s <= inference_limit))

        self._require_smallest_fits(smallest, n_levels, shape, usable, settings)
        chosen, why, given_up = None, "", []
        for tier in candidate_tiers:
            resolution = tier[0].describe().split(", ")[-1]
            first = _first_fitting(tier, lambda c: measure(c)[0])    # memory is monotone along the tier
            if first is None:
                given_up.append(f"{resolution} given up: even {tier[-1].describe()} exceeds the memory")
                continue
            # time is not monotone (LK multiplies FLOPs by ~4), so scan on from the first that fits the memory
            start = tier.index(first)
            chosen = next((c for c in tier[start:] if meets(c)), None)
            if chosen is not None:
                why = self._why_met(chosen, tier, start, device, time_limit, inference_limit, measure)
                break
            cheapest = tier[-1]
            if width_first and device == "cpu" and meets(cheapest, slowdown):
                chosen = cheapest
                why = (f"CPU width-first: kept {resolution} at width {cheapest.width}, whose step needs "
                       f"{measure(cheapest)[1]:.1f} s per pair, above the {time_limit:g} s target: training steps "
                       f"are traded ({measure(cheapest)[1] / time_limit:.1f}x fewer per minute, "
                       + ("without limit" if math.isinf(slowdown) else f"within --cpu-max-slowdown {slowdown:g}")
                       + ") before resolution")
                break
            cheapest_s = measure(cheapest)[1]
            if device == "cpu" and cheapest_s > time_limit * slowdown:
                limit = f"{slowdown:g} x {time_limit:g} s" if width_first else f"{time_limit:g} s"
                given_up.append(f"{resolution} given up: even {cheapest.describe()} needs {cheapest_s:.1f} s per "
                                f"training pair (> {limit})")
            else:
                given_up.append(f"{resolution} given up: no candidate meets the time targets")
        time_note = None
        if chosen is None:   # the smallest fits the memory, so only the time targets failed
            chosen = smallest
            time_note = (f"no candidate meets the CPU time targets ({time_limit:g} s per training pair on {threads} "
                         f"threads{'' if device == 'cpu' else ', not applied on ' + device}; "
                         f"{inference_limit} s per registration on 2 cores); took the smallest network")
            why = time_note
        if given_up:
            why = "; ".join(given_up) + "; so " + why
        batch, estimate = self._grow_batch(chosen, n_levels, shape, usable, device)
        notes = self._notes(architecture_for(chosen, n_levels), estimate, settings, usable, threads,
                            list(tried.values()), time_note)
        notes["why"] = why
        if device == "cpu":
            notes["cpu_trade_order"] = order
        logger.info("planned %s at %s: %s, batch %d, %.2f GB predicted of %.2f GB usable", device, shape,
                    chosen.describe(), batch, estimate.training_peak_bytes / 1e9, usable / 1e9)
        return Decision(architecture=architecture_for(chosen, n_levels), batch_size=batch, divisor=divisor,
                        notes=notes)

    @staticmethod
    def _why_met(chosen: Candidate, tier: list[Candidate], start: int, device: str, time_limit: float,
                 inference_limit: float | None, measure: Callable[[Candidate], tuple[bool, float, float]]) -> str:
        """Why ``chosen`` (the first of its tier to meet every target): what stopped the richer ones."""
        index = tier.index(chosen)
        if index == 0:
            return f"{chosen.describe()}: the richest candidate; it fits the memory" + (
                " and meets the time targets" if device == "cpu" or inference_limit is not None else "")
        richer = tier[index - 1]
        if index == start:
            return f"{chosen.describe()}: the richest that fits the memory ({richer.describe()} is too large)"
        _, train_s, infer_s = measure(richer)
        costs = []
        if device == "cpu" and train_s > time_limit:
            costs.append(f"{train_s:.1f} s per training pair > {time_limit:g} s")
        if inference_limit is not None and infer_s > inference_limit:
            costs.append(f"{infer_s:.1f} s CPU inference on 2 cores > {inference_limit:g} s")
        return (f"{chosen.describe()}: the richest that meets the time targets ({richer.describe()} needs "
                f"{' and '.join(costs) or 'more time'})")

    def _require_smallest_fits(self, smallest: Candidate, n_levels: int, shape: list[int], usable: float,
                               settings: PlannerSettings) -> None:
        """Rule 5, checked first: the one-line error with the budget the smallest network would need."""
        e = self.estimate(architecture_for(smallest, n_levels), shape, 1, settings.device)
        if e.training_peak_bytes <= usable:
            return
        flag = "--memory-target" if settings.device == "cpu" else "--gpu-memory-target"
        need = math.ceil(needed_budget_gb(e, settings.device) * 100) / 100
        raise NnregError(
            f"memory budget {settings.memory_target_gb:g} GB ({settings.device}) is too small for even the "
            f"smallest network ({smallest.describe()}, batch 1) at {'x'.join(map(str, shape))}: it needs "
            f"{need:.2f} GB; set {flag} {math.ceil(need * 10) / 10:g} or more")

    def _grow_batch(self, chosen: Candidate, n_levels: int, shape: list[int], usable: float,
                    device: str) -> tuple[int, MemoryEstimate]:
        """Largest batch ≤ the cap that fits: extrapolated from batch 1 and 2, then confirmed by a trace."""
        arch = architecture_for(chosen, n_levels)
        one = self.estimate(arch, shape, 1, device)
        cap = MAX_BATCH.get(device, 1)
        if cap == 1:
            return 1, one
        two = self.estimate(arch, shape, 2, device)
        per_pair = max(1, two.training_peak_bytes - one.training_peak_bytes)
        batch = int(max(1, min(cap, 1 + (usable - one.training_peak_bytes) // per_pair)))
        while batch > 1:
            e = two if batch == 2 else self.estimate(arch, shape, batch, device)
            if e.training_peak_bytes <= usable:
                return batch, e
            batch -= 1
        return 1, one

    @staticmethod
    def _notes(architecture: dict[str, Any], e: MemoryEstimate, settings: PlannerSettings, usable: float, threads: int,
               tried: list[str], time_note: str | None) -> dict[str, Any]:
        notes: dict[str, Any] = {
            "rule": "memory-driven: depth from shape; widest width / LK / finest resolution that fits; "
                    "then batch size (documentation/planner.md)",
            "device": settings.device,
            "budget_gb": settings.memory_target_gb,
            "usable_gb": round(usable / 1e9, 3),
            "predicted_training_peak_gb": round(e.training_peak_bytes / 1e9, 3),
            "predicted_inference_peak_gb": round(e.inference_peak_bytes / 1e9, 3),
            "parameters": e.parameters,
            "flops_training_step": e.flops_training_step,
            "flops_inference": e.flops_inference,
            "predicted_for": prediction_key(architecture, list(e.shape), e.batch_size, settings.device),
            "candidates_tried": tried,
        }
        if settings.device == "cpu":
            notes["cpu_seconds_per_pair_training"] = round(cpu_seconds(e, threads), 2)
        notes["cpu_seconds_per_pair_inference_2_cores"] = round(cpu_inference_seconds(e), 2)
        if "cpu_inference_seconds" in settings.extra:
            notes["cpu_inference_target_seconds"] = settings.extra["cpu_inference_seconds"]
        if time_note:
            notes["time_target"] = time_note
        return notes


def _first_fitting(ordered: list[Candidate], fits: Callable[[Candidate], bool]) -> Candidate | None:
    """The first candidate of ``ordered`` that fits, assuming fitting is monotone along the list (bisection)."""
    if not ordered:
        return None
    if fits(ordered[0]):
        return ordered[0]
    if not fits(ordered[-1]):
        return None
    lo, hi = 0, len(ordered) - 1          # ordered[lo] does not fit, ordered[hi] fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(ordered[mid]):
            hi = mid
        else:
            lo = mid
    return ordered[hi]


memory_driven_decision = MemoryDrivenPlanner()
