"""Fine-tuning from pretrained weights (``nnreg_train ... -pretrained_weights FILE``), as nnU-Net does.

The file is an nnreg checkpoint (``checkpoint_final.pth`` of any trained or installed model: its
``network_weights``) or a bare ``state_dict``; DDP / ``torch.compile`` prefixes are stripped. Every tensor of the
planned network must be present with the same shape, so a model of another architecture (other channel widths,
levels, kernel sizes, CA/BF modules) is refused with one line naming the first tensor that does not fit; tensors of
the file the network does not have are reported and ignored. Only weights are taken: the optimiser, epoch and
learning-rate schedule start fresh. Which tensors were loaded is logged, grouped by module.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from nnreg.training.checkpoint import clean_state_dict
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.safe_load import UnreadableCheckpointError, load_tensors_only

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained_weights` did."""

    path: Path
    loaded: list[str]
    ignored: list[str]
    parameters: int

    def describe(self) -> str:
        groups = Counter(".".join(key.split(".")[:2]) if key.split(".")[0] in ("heads", "co_attention", "bilateral")
                         else key.split(".")[0] for key in self.loaded)
        summary = ", ".join(f"{name} ({count})" for name, count in sorted(groups.items()))
        ignored = f"; ignored {len(self.ignored)} tensor(s) the network lacks: {', '.join(self.ignored[:5])}" \
            if self.ignored else ""
        return (f"pretrained weights {self.path}: loaded {len(self.loaded)} tensors ({self.parameters:,} values): "
                f"{summary}{ignored}")


def read_pretrained_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights in ``path`` (checkpoint or bare state_dict) on the CPU, prefixes stripped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigurationError("pretrained weights file not found", path)
    try:
        state = load_tensors_only(path)   # tensors and plain data only: a file holding other objects is refused
    except UnreadableCheckpointError as exc:
        raise ConfigurationError(f"cannot read pretrained weights ({exc.reason})", path) from None
    if isinstance(state, dict) and "network_weights" in state:
        state = state["network_weights"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigurationError("not network weights (expects an nnreg checkpoint or a state_dict of tensors)", path)
    return clean_state_dict(state)


def load_pretrained_weights(network: torch.nn.Module, path: str | Path) -> PretrainedReport:
    """Copy the weights in ``path`` into ``network`` after checking that every tensor fits; logs what was loaded."""
    path = Path(path).expanduser()
    source = read_pretrained_state(path)
    target = network.state_dict()
    missing = [k for k in target if k not in source]
    if missing:
        raise ConfigurationError(f"the architecture does not fit: the planned network's {missing[0]} (and "
                                 f"{len(missing) - 1} more) is not in the file", path)
    for key, tensor in target.items():
        if tuple(source[key].shape) != tuple(tensor.shape):
            raise ConfigurationError(f"the architecture does not fit: {key} has shape {list(source[key].shape)} in "
                                     f"the file but {list(tensor.shape)} in the planned network", path)
    network.load_state_dict({k: source[k] for k in target}, strict=True)
    report = PretrainedReport(path, list(target), sorted(set(source) - set(target)),
                              sum(int(source[k].numel()) for k in target))
    logger.info(report.describe())
    return report
