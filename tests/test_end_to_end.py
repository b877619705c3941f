"""The whole pipeline as a user runs it: the built-in example (build -> nnreg_plan_and_preprocess -> nnreg_train
-> nnreg_predict -> nnreg_evaluate), run through the installed commands at a tiny size."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("nilearn")

from nnreg.example.run import ExampleOptions, run_example  # noqa: E402


@pytest.mark.slow
def test_example_pipeline_end_to_end(tmp_path: Path) -> None:
    options = ExampleOptions(output=tmp_path / "example", n_train=5, n_val=2, epochs=1, iterations_per_epoch=3)
    metrics = run_example(options)
    after, before = metrics["after"], metrics["before"]
    assert set(after["cases"]) == set(before["cases"]) and len(after["cases"]) == 2
    for name in ("DSC", "HD95", "TRE_lm", "Non-diffeomorphic Volumes"):
        assert name in after["aggregates"] and math.isfinite(after["aggregates"][name]["mean"])
    assert after["aggregates"]["Non-diffeomorphic Volumes"]["mean"] < 0.01      # compose cascade: no folding
    assert 0.3 < after["aggregates"]["DSC"]["mean"] <= 1.0
    out = options.output
    assert len(list((out / "predictions").glob("disp_*.nii.gz"))) == 2
    assert len(list((out / "predictions").glob("**/*.png"))) == 2
    model = out / "nnReg_results" / "Dataset999_MNIExample" / "nnRegTrainer__nnRegPlans__3d_halfres"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    assert (model / "fold_all" / "validation" / "summary.json").is_file()
