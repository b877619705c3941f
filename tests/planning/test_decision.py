"""The memory-driven decision rules, with a fast analytic estimator (rules) and the real memory model (limits)."""
from __future__ import annotations

import math
import re

import pytest

from nnreg.planning.decision import (
    architecture_for,
    MAX_BATCH,
    WIDTH_LADDER,
    MemoryDrivenPlanner,
    memory_driven_decision,
    tiers,
)
from nnreg.planning.memory import MemoryEstimate
from nnreg.planning.planner import Decision, PlannerSettings
from nnreg.utilities.errors import NnregError

LUMIR_BOX = [160, 224, 192]


def analytic(arch: dict, shape: list[int], batch: int, device: str) -> MemoryEstimate:
    """Memory and FLOPs that grow like the real ones: with voxels, width, kernel volume and batch."""
    kw = arch["kwargs"]
    voxels = math.prod(shape) / 8 ** kw["skip_levels"]
    width, k3 = kw["base_channels"], kw["kernel_size"] ** 3
    step = int(voxels * (12 * width + 200) * 4 * (1.05 if k3 > 27 else 1.0) * batch)
    params = int(width * width * (k3 + 28) * 6)
    flops = int(voxels * width * width * (k3 + 28) * 20 * batch)
    return MemoryEstimate(shape=tuple(shape), batch_size=batch, device=device, parameters=params,
                          parameter_bytes=4 * params, optimizer_bytes=8 * params,
                          batch_bytes=8 * batch * math.prod(shape),
                          step_bytes=step, step_tensor_bytes=step, inference_bytes=step // 4,
                          flops_training_step=flops, flops_inference=flops // (3 * batch), peak_op="analytic")


def _plan(budget: float, box: list[int] = LUMIR_BOX, device: str = "cuda", **extra: float) -> Decision:
    settings = PlannerSettings(device=device, memory_target_gb=budget, extra=dict(extra))
    return MemoryDrivenPlanner(analytic)(box, settings)


def _rank(decision: Decision) -> tuple[int, int]:
    """Position of the chosen candidate in the preference order (lower = richer) and minus the batch size."""
    kw = decision.architecture["kwargs"]
    width_first = decision.notes.get("cpu_trade_order") == "width-first"
    order = [(c.width, c.kernel, c.skip) for tier in tiers(kw["n_levels"], width_first) for c in tier]
    return order.index((kw["base_channels"], kw["kernel_size"], kw["skip_levels"])), -decision.batch_size


def test_more_budget_never_gives_a_poorer_plan_and_budgets_differ() -> None:
    decisions = [_plan(gb) for gb in (2, 4, 8, 16, 24, 48, 80, 160)]
    ranks = [_rank(d) for d in decisions]
    assert ranks == sorted(ranks, reverse=True)
    assert len(set(ranks)) >= 5
    assert decisions[-1].batch_size == MAX_BATCH["cuda"]
    assert decisions[-1].architecture["kwargs"]["base_channels"] == max(WIDTH_LADDER)
    assert decisions[-1].architecture["kwargs"]["kernel_size"] == 5
    for d in decisions:
        assert d.notes["predicted_training_peak_gb"] <= d.notes["usable_gb"] + 1e-9


@pytest.mark.parametrize("box", [[32, 40, 32], [64, 80, 64], [80, 112, 96], [100, 60, 200], LUMIR_BOX, [17, 90, 90]])
@pytest.mark.parametrize("budget", [1.5, 8.0, 80.0])
def test_limits_coarsest_level_and_width_ladder(box: list[int], budget: float) -> None:
    d = _plan(budget, box)
    kw = d.architecture["kwargs"]
    assert kw["base_channels"] in WIDTH_LADDER and kw["kernel_size"] in (3, 5)
    assert d.divisor == 2 ** (kw["n_levels"] - 1)
    coarsest = [math.ceil(b / d.divisor) for b in box]
    assert min(coarsest) >= 8 or kw["n_levels"] == 1
    assert 0 <= kw["skip_levels"] < kw["n_levels"]


def test_resolution_is_traded_only_after_width() -> None:
    """A coarser tier is used only when even the narrowest candidate of the finer tier does not fit."""
    seen_skips = set()
    for budget in (1.5, 2, 4, 8, 16, 24, 48):
        d = _plan(budget)
        kw = d.architecture["kwargs"]
        seen_skips.add(kw["skip_levels"])
        if kw["skip_levels"] > 0:
            finer = tiers(kw["n_levels"])[kw["skip_levels"] - 1][-1]
            assert (finer.width, finer.kernel) == (16, 3)
            cost = analytic(architecture_for(finer, kw["n_levels"]), d.notes["predicted_for"]["shape"], 1, "cuda")
            assert cost.training_peak_bytes > d.notes["usable_gb"] * 1e9
        else:
            assert kw["base_channels"] >= 16
    assert seen_skips == {0, 1, 2}


def test_cpu_plans_respect_the_time_target_and_use_batch_one() -> None:
    loose = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=1e6, cpu_threads=2)
    tight = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=2, cpu_threads=2)
    assert loose.batch_size == tight.batch_size == 1
    assert _rank(tight) > _rank(loose)
    assert tight.notes["cpu_seconds_per_pair_training"] <= 2
    assert tight.architecture["kwargs"]["skip_levels"] == 0            # width was traded, not resolution
    hopeless = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=1e-6, cpu_threads=2)
    assert "time target" in hopeless.notes["time_target"]
    assert hopeless.architecture["kwargs"]["base_channels"] == WIDTH_LADDER[0]


def _seconds(width: int, skip: int, box: list[int] = [80, 112, 96]) -> float:
    """The analytic estimator's CPU seconds per training pair on 2 threads for width ``width`` (3³ kernels)."""
    from nnreg.planning.decision import Candidate, cpu_seconds
    from nnreg.planning.topology import cascade_depth

    n = cascade_depth(box)
    divisor = 2 ** (n - 1)
    shape = [math.ceil(b / divisor) * divisor for b in box]
    return cpu_seconds(analytic(architecture_for(Candidate(width, 3, skip), n), shape, 1, "cpu"), 2)


def test_cpu_width_first_goes_down_to_width_8_before_resolution() -> None:
    """Between the width-8 and width-16 step times, width-first keeps full resolution; resolution-first does not."""
    target = (_seconds(8, 0) + _seconds(12, 0)) / 2
    width_first = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=target, cpu_threads=2)
    kw = width_first.architecture["kwargs"]
    assert (kw["base_channels"], kw["skip_levels"]) == (8, 0)
    assert width_first.notes["cpu_trade_order"] == "width-first" and "richest" in width_first.notes["why"]
    legacy = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=target, cpu_threads=2,
                   cpu_trade_order="resolution-first")
    assert legacy.architecture["kwargs"]["skip_levels"] >= 1
    assert legacy.architecture["kwargs"]["base_channels"] >= 16
    assert "full res given up" in legacy.notes["why"]


def test_cpu_width_first_trades_training_steps_before_resolution() -> None:
    """Width 8 at full resolution slower than the target but within the slowdown: kept, with the reason noted;
    beyond the slowdown the finest level is skipped."""
    slow = _seconds(8, 0)
    kept = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=slow / 3, cpu_threads=2, cpu_max_slowdown=4)
    kw = kept.architecture["kwargs"]
    assert (kw["base_channels"], kw["skip_levels"]) == (8, 0)
    assert "training steps are traded" in kept.notes["why"] and "3.0x fewer" in kept.notes["why"]
    coarser = _plan(12, [80, 112, 96], "cpu", cpu_seconds_per_pair=slow / 3, cpu_threads=2, cpu_max_slowdown=2)
    assert coarser.architecture["kwargs"]["skip_levels"] == 1
    assert "full res given up" in coarser.notes["why"] and "2 x" in coarser.notes["why"]
    with pytest.raises(NnregError, match="trade order"):
        _plan(12, [80, 112, 96], "cpu", cpu_trade_order="sideways")


def _fingerprint(shape: list[int], spacing: float = 1.0) -> dict:
    return {"dataset_name": "Dataset9_Shape", "median_spacing": [spacing] * 3, "median_shape": shape,
            "union_foreground_bbox": [[0, n] for n in shape], "same_grid": True,
            "intensity": {"percentiles": {"0.5": 1.0, "50.0": 90.0, "99.5": 255.0}, "min": 0.0, "max": 255.0}}


@pytest.mark.parametrize("order", ["width-first", "resolution-first"])
def test_fullres_and_halfres_are_never_the_same_network(order: str) -> None:
    """A CPU target that would make 3d_fullres skip its finest level onto 3d_halfres's grid with the same width:
    3d_fullres is re-planned keeping its finer output grid, and the plan says why."""
    from nnreg.planning.planner import output_grid, plan_experiment
    from nnreg.planning.report import plans_table

    box = [160, 224, 192]
    half_target = _seconds(8, 0, [80, 112, 96]) * 1.01           # 3d_halfres affords width 8 at 2 mm, no more
    settings = PlannerSettings(device="cpu", memory_target_gb=64,
                               extra={"cpu_seconds_per_pair": half_target, "cpu_threads": 2, "cpu_max_slowdown": 1.0,
                                      "cpu_trade_order": order})
    planner = MemoryDrivenPlanner(analytic)
    first = planner(box, settings)                               # what 3d_fullres alone would get
    assert first.architecture["kwargs"]["skip_levels"] >= 1
    plans = plan_experiment(_fingerprint(box), settings, planner)
    full, half = plans.configuration("3d_fullres"), plans.configuration("3d_halfres")
    assert output_grid(full) != output_grid(half)
    assert full.architecture["kwargs"]["skip_levels"] < first.architecture["kwargs"]["skip_levels"]
    assert "same network" in full.notes["why"]
    assert plans.planner["cpu_trade_order"] == order
    table = plans_table(plans, with_predictions=False)
    assert "why (3d_fullres)" in table and "why (3d_halfres)" in table


def test_cpu_deployment_configuration_meets_the_inference_target_on_any_device() -> None:
    from nnreg.planning.planner import CPU_DEPLOYMENT, settings_for

    gpu = PlannerSettings(device="cuda", memory_target_gb=80, extra={"cpu_inference_seconds": 10})
    full = MemoryDrivenPlanner(analytic)(LUMIR_BOX, settings_for("3d_fullres", gpu))
    half_box = [b // 2 for b in LUMIR_BOX]
    half = MemoryDrivenPlanner(analytic)(half_box, settings_for(CPU_DEPLOYMENT, gpu))
    unconstrained = MemoryDrivenPlanner(analytic)(half_box, settings_for("3d_fullres", gpu))
    assert "cpu_inference_target_seconds" not in full.notes
    assert half.notes["cpu_inference_target_seconds"] == 10
    assert half.notes["cpu_seconds_per_pair_inference_2_cores"] <= 10
    assert unconstrained.notes["cpu_seconds_per_pair_inference_2_cores"] > 10   # the target is what bit
    assert _rank(half) > _rank(unconstrained)
    default = settings_for(CPU_DEPLOYMENT, PlannerSettings(device="cuda"))
    assert default.extra["cpu_inference_seconds"] == 15.0


def test_real_model_large_budget_takes_the_richest_network() -> None:
    d = memory_driven_decision([32, 40, 32], PlannerSettings(device="cuda", memory_target_gb=80))
    kw = d.architecture["kwargs"]
    assert (kw["base_channels"], kw["kernel_size"], kw["skip_levels"], d.batch_size) == (64, 5, 0, 4)
    assert d.notes["predicted_training_peak_gb"] > 0 and d.notes["flops_training_step"] > 0


def test_real_model_too_small_budget_names_the_minimum() -> None:
    box = [32, 40, 32]
    with pytest.raises(NnregError) as info:
        memory_driven_decision(box, PlannerSettings(device="cuda", memory_target_gb=0.3))
    message = str(info.value)
    assert "\n" not in message and "too small" in message and "--gpu-memory-target" in message
    need = float(re.search(r"needs ([0-9.]+) GB", message).group(1))
    assert need > 0.5     # the process overhead alone is 0.5 GB
    d = memory_driven_decision(box, PlannerSettings(device="cuda", memory_target_gb=need))   # the minimum works
    assert d.notes["predicted_training_peak_gb"] <= d.notes["usable_gb"]
