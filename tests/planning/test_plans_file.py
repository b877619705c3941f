"""Plans JSON round trip and configuration inheritance."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnreg.planning.plans import ConfigurationPlan, Plans
from nnreg.utilities.errors import ConfigurationError


def _config(**overrides) -> dict:
    cfg = ConfigurationPlan(
        data_identifier="P_3d_fullres", spacing=[1.0] * 3, resampling_factor=[1.0] * 3,
        resampled_shape=[32, 40, 32], crop_start=[0, 0, 0], shape=[32, 40, 32],
        normalization={"scheme": "fixed_range", "lower": 0.0, "upper": 255.0}, batch_size=1,
        architecture={"network_class": "CascadeRegNet", "kwargs": {"n_levels": 3, "base_channels": 32}},
    ).to_json()
    cfg.update(overrides)
    return cfg


def _plans(configs: dict) -> dict:
    return {"dataset_name": "D", "plans_name": "P", "original_median_spacing": [1.0] * 3,
            "original_median_shape": [32, 40, 32], "configurations": configs}


def test_round_trip(tmp_path: Path) -> None:
    plans = Plans.from_json(_plans({"3d_fullres": _config()}))
    plans.save(tmp_path / "P.json")
    again = Plans.load(tmp_path / "P.json")
    assert again.to_json() == plans.to_json()


def test_inheritance_merges_dicts_deeply_and_child_wins() -> None:
    child = {"inherits_from": "3d_fullres", "batch_size": 2, "architecture": {"kwargs": {"base_channels": 64}}}
    plans = Plans.from_json(_plans({"3d_fullres": _config(), "wide": child}))
    wide = plans.configuration("wide")
    assert wide.batch_size == 2
    assert wide.architecture == {"network_class": "CascadeRegNet", "kwargs": {"n_levels": 3, "base_channels": 64}}
    assert wide.data_identifier == "P_3d_fullres" and wide.inherits_from == "3d_fullres"
    assert plans.configuration("3d_fullres").architecture["kwargs"]["base_channels"] == 32


def test_inheritance_cycles_and_unknown_parents_are_errors() -> None:
    with pytest.raises(ConfigurationError, match="inherits from itself"):
        Plans.from_json(_plans({"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}))
    with pytest.raises(ConfigurationError, match="unknown 'nope'"):
        Plans.from_json(_plans({"a": {"inherits_from": "nope"}}))


def test_unknown_configuration_lists_the_available_ones() -> None:
    plans = Plans.from_json(_plans({"3d_fullres": _config()}))
    with pytest.raises(ConfigurationError, match="available: 3d_fullres"):
        plans.configuration("3d_lowres")


def test_broken_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "P.json"
    path.write_text(json.dumps({"dataset_name": "D"}))
    with pytest.raises(ConfigurationError, match="P.json: not a valid plans file"):
        Plans.load(path)
