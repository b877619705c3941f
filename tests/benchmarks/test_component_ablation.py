"""benchmarks/component_ablation.py at a tiny time budget: variants as inheriting plans entries, train, predict,
evaluate through the documented commands, one row per variant."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnreg.planning.plans import Plans
from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset
from tests.training.conftest import shrink_plans

ablation = load_benchmark("component_ablation")


@pytest.fixture()
def tiny_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess

    raw, pre, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    make_learn2reg_dataset(raw / "Dataset902_Abl", n_train=5, n_val=2)
    plan_and_preprocess(PlanAndPreprocessOptions(dataset="902", raw=str(raw), preprocessed=str(pre),
                                                 configurations=("3d_fullres",), num_processes=0))
    plans_path = pre / "Dataset902_Abl" / "nnRegPlans.json"
    shrink_plans(plans_path, batch_size=1)
    for key, path in (("raw", raw), ("preprocessed", pre), ("results", results)):
        monkeypatch.setenv(f"nnReg_{key}", str(path))
    return {"raw": raw, "preprocessed": pre, "results": results, "plans": plans_path}


def test_variants_are_inheriting_plans_entries(tiny_env: dict[str, Path]) -> None:
    names = ablation.add_variant_configurations(tiny_env["plans"], "3d_fullres", ablation.VARIANTS)
    plans = Plans.load(tiny_env["plans"])
    base = plans.configuration("3d_fullres")
    for variant, name in names.items():
        cfg = plans.configuration(name)
        assert cfg.data_identifier == base.data_identifier and cfg.shape == base.shape   # same preprocessed data
        kw = cfg.architecture["kwargs"]
        assert kw["base_channels"] == base.architecture["kwargs"]["base_channels"]
        assert kw["co_attention"] == (variant == "CA")
        assert kw["bilateral_filter"] == variant.startswith("BF")
        assert kw["kernel_size"] == (5 if variant.startswith("LK") else 3)
    ca = plans.configuration(names["CA"]).architecture["kwargs"]
    assert ca["co_attention_levels"] == [1, 2]       # 32x40x32: every level has <= 16384 positions except level 0
    assert plans.configuration(names["BF-velocity"]).architecture["kwargs"]["bilateral_on"] == "velocity"
    assert plans.configuration(names["IC"]).symmetric_training == {"lambda_ic": 1.0}
    assert plans.configuration(names["IC-small"]).symmetric_training == {"lambda_ic": 0.1}
    assert plans.configuration(names["backbone"]).symmetric_training is None


def test_tiny_budget_end_to_end(tiny_env: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ablation.json"
    assert ablation.main(["-d", "902", "--minutes", "0.05", "--json", str(out), "--variants", "IC",
                          "--refinement-steps", "2"]) == 0
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["IC"]
    assert rows[0]["architecture"]["kwargs"]["kernel_size"] == 3
    for r in rows:
        assert r["epochs"] >= 1 and r["iterations_per_epoch"] >= 1
        for label in ("net", "refined"):
            assert 0.0 <= r[label]["dice"] <= 1.0 and r[label]["ndv"] is not None
            assert r[label]["ic_pairs"] == 1 and r[label]["ic_mean"] >= 0.0   # the two validation images, both orders
    assert "| IC |" in ablation.table(rows)
