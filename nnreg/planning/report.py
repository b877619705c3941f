"""Human-readable summary of a plans file (printed by nnreg_plan_and_preprocess)."""
from __future__ import annotations

from nnreg.planning.plans import Plans


def plans_table(plans: Plans) -> str:
    """One row per configuration: grid, cascade depth, width, kernel, scheme, batch size."""
    header = f"{'configuration':<14}{'shape':<16}{'spacing':<18}{'levels':>7}{'width':>7}{'kernel':>7}" \
             f"{'cascade':>9}{'CA':>4}{'BF':>4}{'batch':>7}"
    rows = [f"plans {plans.plans_name} for {plans.dataset_name}", header]
    for name, cfg in plans.configurations.items():
        kw = cfg.architecture.get("kwargs", {})
        rows.append(
            f"{name:<14}{'x'.join(map(str, cfg.shape)):<16}{'x'.join(f'{s:g}' for s in cfg.spacing):<18}"
            f"{kw.get('n_levels', '-'):>7}{kw.get('base_channels', '-'):>7}{kw.get('kernel_size', '-'):>7}"
            f"{kw.get('cascade', '-'):>9}{'y' if kw.get('co_attention') else 'n':>4}"
            f"{'y' if kw.get('bilateral_filter') else 'n':>4}{cfg.batch_size:>7}")
    return "\n".join(rows)
