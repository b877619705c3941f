"""Official Learn2Reg/LUMIR evaluation configs: parsing, and combining several into one evaluation plan.

Format (``ground-truth/*_evaluation_config.json`` of ``L2R_LUMIR_Eval``)::

    {"name": "LUMIR",
     "evaluation_methods": [{"name": "DSC", "metric": "dice", "labels": [0, 4, ...]},
                            {"name": "TRE_lm", "metric": "tre", "dest": "landmarks"}, ...],
     "expected_shape": [160, 224, 192, 3],
     "eval_pairs": [{"fixed": "./imagesVal/X_3455_0000.nii.gz", "moving": "./imagesVal/X_3454_0000.nii.gz"}],
     "masked_evaluation": false}

Metrics: ``dice``, ``hd95`` (need ``labels``), ``tre`` (needs ``dest``, the folder replacing ``images``),
``ndv``, ``sdlogj`` (official) and ``non_positive_jacobians`` (nnreg). An unknown metric is an error
(the official code silently skips it).

Combining configs: the official evaluator runs ``-c1`` and ``-c2`` separately and merges the per-case
dicts with ``{**cases1, **cases2}``, so a pair evaluated by both keeps only the second config's metrics.
nnreg merges the *metrics* of such a pair instead (a metric name present in both takes the later
config's value), evaluates each pair once, and takes ``name`` from the last config like the official code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnreg.dataset.naming import case_key
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import read_json

KNOWN_METRICS = ("dice", "hd95", "tre", "ndv", "sdlogj", "non_positive_jacobians")
LABEL_METRICS = ("dice", "hd95")


@dataclass(frozen=True)
class EvaluationMethod:
    """One entry of ``evaluation_methods``: output name, metric id and its parameters."""

    name: str
    metric: str
    labels: tuple[float, ...] | None = None
    dest: str | None = None
    masked: bool = False  # the config's masked_evaluation (used by sdlogj, as the official code)


@dataclass(frozen=True)
class EvalPair:
    """A pair as written in the config: paths relative to the ground-truth root."""

    fixed: str
    moving: str

    @property
    def key(self) -> str:
        return case_key(self.fixed, self.moving)


@dataclass
class EvaluationConfig:
    """A parsed evaluation config."""

    name: str
    methods: list[EvaluationMethod]
    expected_shape: tuple[int, ...] | None
    pairs: list[EvalPair]
    path: Path | None = None


@dataclass
class CasePlan:
    """Everything to evaluate for one pair, merged over the configs."""

    pair: EvalPair
    methods: dict[str, EvaluationMethod] = field(default_factory=dict)
    expected_shapes: list[tuple[int, ...]] = field(default_factory=list)


def _method(raw: Any, i: int, masked: bool, path: Path | None) -> EvaluationMethod:
    where = f"evaluation_methods[{i}]"
    if not isinstance(raw, dict) or "metric" not in raw:
        raise NnregError(f"{where} must be an object with 'name' and 'metric'", path)
    metric = str(raw["metric"])
    if metric not in KNOWN_METRICS:
        raise NnregError(f"{where} has unknown metric {metric!r} (known: {', '.join(KNOWN_METRICS)})", path)
    name = str(raw.get("name", metric))
    labels = None
    if metric in LABEL_METRICS:
        raw_labels = raw.get("labels")
        if not isinstance(raw_labels, list) or not all(isinstance(v, (int, float)) for v in raw_labels):
            raise NnregError(f"{where} ({metric}) needs a 'labels' list of numbers", path)
        labels = tuple(float(v) for v in raw_labels)
    dest = None
    if metric == "tre":
        dest = raw.get("dest")
        if not isinstance(dest, str) or not dest:
            raise NnregError(f"{where} (tre) needs 'dest', the ground-truth folder kind (e.g. 'landmarks')", path)
    return EvaluationMethod(name, metric, labels, dest, masked)


def parse_config(raw: Any, path: Path | None = None) -> EvaluationConfig:
    """Validate an official config dict; one-line :class:`NnregError` naming ``path`` on a problem."""
    if not isinstance(raw, dict):
        raise NnregError("an evaluation config must be a JSON object", path)
    for key in ("evaluation_methods", "eval_pairs"):
        if not isinstance(raw.get(key), list):
            raise NnregError(f"lacks the '{key}' list", path)
    masked = bool(raw.get("masked_evaluation", False))
    methods = [_method(m, i, masked, path) for i, m in enumerate(raw["evaluation_methods"])]
    shape = raw.get("expected_shape")
    if shape is not None:
        if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
            raise NnregError("'expected_shape' must be a list of integers", path)
        shape = tuple(shape)
    pairs = []
    for i, item in enumerate(raw["eval_pairs"]):
        if not isinstance(item, dict) or not isinstance(item.get("fixed"), str) or not isinstance(
                item.get("moving"), str):
            raise NnregError(f"eval_pairs[{i}] must have 'fixed' and 'moving' paths", path)
        pairs.append(EvalPair(item["fixed"], item["moving"]))
    return EvaluationConfig(str(raw.get("name", path.stem if path else "nnreg")), methods, shape, pairs, path)


def locate_config(path: str | Path, dataset_root: str | Path) -> tuple[Path, str]:
    """Where ``-c PATH`` is: an absolute path as it is; a relative one (``NAME.json`` as the docs and the challenge
    downloads show it) in the current folder first, then in the dataset folder. Returns the file and a line saying
    which was used; a one-line :class:`NnregError` naming both places when it is in neither."""
    path = Path(path).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise NnregError("evaluation config not found", path)
        return path, f"evaluation config {path}"
    here, there = Path.cwd() / path, Path(dataset_root).absolute() / path
    if here.is_file():
        return here, f"evaluation config {path}: {here} (current folder)"
    if there.is_file():
        return there, f"evaluation config {path}: {there} (dataset folder; not in the current folder)"
    raise NnregError(f"evaluation config not found in the current folder ({Path.cwd()}) nor in the dataset folder "
                     f"({Path(dataset_root).absolute()})", path)


def load_config(path: str | Path) -> EvaluationConfig:
    """Read and parse an official evaluation config file."""
    path = Path(path)
    return parse_config(read_json(path), path)


def merge_configs(configs: list[EvaluationConfig]) -> tuple[str, list[CasePlan]]:
    """One plan per pair in first-seen order; metrics of a pair shared by several configs are merged."""
    if not configs:
        raise ValueError("at least one evaluation config is needed")
    plans: dict[str, CasePlan] = {}
    for config in configs:
        for pair in config.pairs:
            plan = plans.setdefault(pair.key, CasePlan(pair))
            for method in config.methods:
                plan.methods[method.name] = method
            if config.expected_shape is not None and config.expected_shape not in plan.expected_shapes:
                plan.expected_shapes.append(config.expected_shape)
    return configs[-1].name, list(plans.values())
