"""``progress.png``: training/validation losses, validation metrics with their moving average, lr, epoch time."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from nnreg.training.logger import TrainingLog  # noqa: E402
from nnreg.utilities.files import atomic_path  # noqa: E402


def _series(log: TrainingLog, key: str) -> tuple[list[int], list[float]]:
    points = [(i + 1, v) for i, v in enumerate(log.values[key]) if v is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_progress(log: TrainingLog, path: Path, metric_name: str) -> None:
    """Draw the curves of ``log`` into ``path`` (written atomically)."""
    fig, axes = plt.subplots(3, 1, figsize=(11, 13))
    ax = axes[0]
    for key, label, style in (("train_loss", "train loss", "b-"), ("val_loss", "val loss", "r-")):
        x, y = _series(log, key)
        if x:
            ax.plot(x, y, style, label=label)
    ax.set_ylabel("loss")
    ax.set_xlabel("epoch")
    twin = ax.twinx()
    for key, label, style in (("val_ncc", "val NCC", "g:"), ("val_dice", "val Dice", "m:"),
                              ("ema_metric", f"{metric_name} (moving avg)", "k--")):
        x, y = _series(log, key)
        if x:
            twin.plot(x, y, style, label=label)
    twin.set_ylabel("validation metric")
    lines = ax.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], loc="center right")
    x, y = _series(log, "epoch_time")
    axes[1].plot(x, y, "b-")
    axes[1].set_ylabel("epoch time (s)")
    axes[1].set_xlabel("epoch")
    x, y = _series(log, "lr")
    axes[2].plot(x, y, "b-")
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
