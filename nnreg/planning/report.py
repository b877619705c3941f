"""Human-readable summary of a plans file (printed by nnreg_plan_and_preprocess).

One row per configuration: input shape, spacing, cascade depth, channel width, kernel size, schemes, batch
size, parameters, FLOPs of a training step, predicted peak memory of a training step and of inference, and
the budget; under the rows, per configuration, why the planner chose it (the plan's ``notes["why"]``), and last
whether training uses contrast augmentation (``contrast_augmentation``, with the planner's reason). Predictions
come from the plan's notes; when the plan was edited by hand since (its architecture, shape or batch size no
longer match what was predicted) they are recomputed for the edited plan.
"""
from __future__ import annotations

from typing import Any

from nnreg.planning.memory import estimate_memory, prediction_key
from nnreg.planning.plans import ConfigurationPlan, Plans

COLUMNS = (("configuration", 15), ("shape", 13), ("spacing", 12), ("lvl", 4), ("width", 6), ("K", 3),
           ("skip", 5), ("schemes", 16), ("batch", 6), ("params", 8), ("TFLOP/step", 11), ("train GB", 9),
           ("infer GB", 9), ("budget GB", 10))


def _schemes(kw: dict[str, Any]) -> str:
    parts = [str(kw.get("cascade", "-"))]
    if kw.get("co_attention"):
        parts.append("CA")
    if kw.get("bilateral_filter"):
        parts.append("BF")
    if int(kw.get("integration_steps", 0) or 0) == 0:
        parts.append("no-int")
    return "+".join(parts)


def predictions(cfg: ConfigurationPlan, device: str) -> dict[str, Any]:
    """The plan's stored predictions, or fresh ones if the plan no longer matches them (hand edit)."""
    notes = cfg.notes or {}
    key = prediction_key(cfg.architecture, cfg.shape, cfg.batch_size, notes.get("device", device))
    if notes.get("predicted_for") == key and "predicted_training_peak_gb" in notes:
        return {k: notes[k] for k in ("parameters", "flops_training_step", "predicted_training_peak_gb",
                                      "predicted_inference_peak_gb")} | {"edited": False}
    e = estimate_memory(cfg.architecture, cfg.shape, cfg.batch_size, key["device"])
    return {"parameters": e.parameters, "flops_training_step": e.flops_training_step,
            "predicted_training_peak_gb": e.training_peak_bytes / 1e9,
            "predicted_inference_peak_gb": e.inference_peak_bytes / 1e9, "edited": True}


def plans_table(plans: Plans, with_predictions: bool = True) -> str:
    """The table printed after planning (``with_predictions=False`` skips any tracing)."""
    device = str(plans.planner.get("device", "cuda"))
    budget = plans.planner.get("memory_target_gb")
    header = "".join(f"{name:<{width}}" for name, width in COLUMNS)
    rows = [f"plans {plans.plans_name} for {plans.dataset_name} (device {device}, budget "
            f"{'-' if budget is None else f'{budget:g} GB'})", header]
    edited = False
    for name, cfg in plans.configurations.items():
        kw = cfg.architecture.get("kwargs", {})
        pred = predictions(cfg, device) if with_predictions else {}
        edited = edited or bool(pred.get("edited"))
        values = [
            name, "x".join(map(str, cfg.shape)), "x".join(f"{s:g}" for s in cfg.spacing),
            kw.get("n_levels", "-"), kw.get("base_channels", "-"), kw.get("kernel_size", "-"),
            kw.get("skip_levels", 0), _schemes(kw), cfg.batch_size,
            f"{pred['parameters'] / 1e6:.2f}M" if pred else "-",
            f"{pred['flops_training_step'] / 1e12:.2f}" if pred else "-",
            f"{pred['predicted_training_peak_gb']:.2f}" if pred else "-",
            f"{pred['predicted_inference_peak_gb']:.2f}" if pred else "-",
            f"{cfg.notes.get('budget_gb', budget) or '-'}",
        ]
        rows.append("".join(f"{str(v):<{width}}" for v, (_, width) in zip(values, COLUMNS)))
        if cfg.notes.get("why"):
            rows.append(f"  why ({name}): {cfg.notes['why']}")
        if cfg.notes.get("same_network"):
            rows.append(f"  note ({name}): {cfg.notes['same_network']}")
        if cfg.notes.get("time_target") and cfg.notes["time_target"] not in cfg.notes.get("why", ""):
            rows.append(f"  note ({name}): {cfg.notes['time_target']}")
        if cfg.notes.get("grid"):
            rows.append(f"  note ({name}): {cfg.notes['grid']}")
    if edited:
        rows.append("  predictions recomputed for hand-edited configurations")
    rows.append(_contrast_line(plans))
    return "\n".join(rows)


def _contrast_line(plans: Plans) -> str:
    """``contrast augmentation (training): on|off`` (per configuration when hand edits differ), with the reason."""
    states = {name: "on" if cfg.contrast_augmentation else "off" for name, cfg in plans.configurations.items()}
    state = next(iter(states.values())) if len(set(states.values())) == 1 else \
        ", ".join(f"{name} {value}" for name, value in states.items())
    why = plans.planner.get("contrast_augmentation_why")
    return f"contrast augmentation (training): {state}" + (f" (planner: {why})" if why else "")
