"""What the trainer records per epoch, the one-line epoch summary, and the moving average that picks the best.

The state is plain lists of numbers (saved in the checkpoint), so a resumed run continues its curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

KEYS = ("train_loss", "train_ncc", "train_reg", "val_loss", "val_ncc", "val_dice", "val_ndv", "ema_metric", "lr",
        "epoch_time")


@dataclass
class TrainingLog:
    """Per-epoch curves; ``None`` entries stand for values that do not exist (e.g. Dice without labels)."""

    values: dict[str, list[float | None]] = field(default_factory=lambda: {k: [] for k in KEYS})

    def log(self, key: str, value: float | None, epoch: int) -> None:
        """Set ``key`` for ``epoch`` (0-based); epochs must be filled in order."""
        series = self.values[key]
        if len(series) == epoch:
            series.append(value)
        elif len(series) == epoch + 1:
            series[epoch] = value
        else:
            raise ValueError(f"log {key!r}: epoch {epoch} but {len(series)} values recorded")

    def last(self, key: str) -> float | None:
        series = self.values[key]
        return series[-1] if series else None

    def update_ema(self, epoch: int, metric: float | None, alpha: float) -> float | None:
        """Exponential moving average of the validation metric (what checkpoint_best follows)."""
        previous = next((v for v in reversed(self.values["ema_metric"][:epoch]) if v is not None), None)
        if metric is None or not math.isfinite(metric):
            ema = previous
        else:
            ema = metric if previous is None else alpha * previous + (1 - alpha) * metric
        self.log("ema_metric", ema, epoch)
        return ema

    def summary_line(self, epoch: int, epochs: int) -> str:
        """``epoch 12/200  loss -0.4123  val NCC 0.4551  val Dice 0.7120  NDV 0.0003 %  lr 3.8e-04  61.2 s``."""
        def fmt(key: str, spec: str) -> str | None:
            value = self.values[key][epoch] if epoch < len(self.values[key]) else None
            return None if value is None else format(value, spec)

        parts = [f"epoch {epoch + 1}/{epochs}", f"loss {fmt('train_loss', '.4f')}"]
        for label, key, spec in (("val NCC", "val_ncc", ".4f"), ("val Dice", "val_dice", ".4f"),
                                 ("NDV", "val_ndv", ".4f"), ("lr", "lr", ".2e"), ("", "epoch_time", ".1f")):
            text = fmt(key, spec)
            if text is not None:
                parts.append(f"{label} {text}".strip() + (" %" if key == "val_ndv" else "")
                             + (" s" if key == "epoch_time" else ""))
        return "  ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) for k, v in self.values.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainingLog":
        log = cls()
        for key in KEYS:
            log.values[key] = list(d.get(key, []))
        return log

    def truncate(self, epochs: int) -> None:
        """Keep the first ``epochs`` entries (a resumed run redoes anything after its checkpoint)."""
        for key in KEYS:
            del self.values[key][epochs:]
