"""On the real OpenBrains80 set (skipped when ../shared/data is absent): nnreg_predict's output has the shape the
official config expects and nnreg_evaluate scores every pair. Weights are random (the format is under test)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from nnreg.networks import default_architecture
from nnreg.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from tests.conftest import shared_dataset
from tests.inference.helpers import write_model_folder


@pytest.mark.shared_data
@pytest.mark.slow
def test_openbrains80_predictions_pass_the_format_checks(tmp_path: Path) -> None:
    from nnreg.cli.evaluate import main as evaluate_main
    from nnreg.cli.predict import main as predict_main

    root = shared_dataset("OpenBrains80")
    _, plans = plan_and_preprocess(PlanAndPreprocessOptions(dataset=str(root), preprocessed=str(tmp_path / "pre"),
                                                            num_processes=0, no_preprocessing=True))
    model = write_model_folder(tmp_path / "results", plans, "3d_fullres", architecture=default_architecture(2, base_channels=8))
    config = json.loads((root / "OBR80_VAL_All_evaluation_config.json").read_text())
    config["eval_pairs"] = config["eval_pairs"][:2]          # two pairs keep the test short; the format is the same
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    pairs_path = tmp_path / "pairs.json"
    pairs_path.write_text(json.dumps([{k: str(root / p[k][2:]) for k in ("fixed", "moving")}
                                      for p in config["eval_pairs"]]))
    out = tmp_path / "preds"
    for handler in [h for h in logging.getLogger("nnreg").handlers if getattr(h, "_nnreg_console", False)]:
        logging.getLogger("nnreg").removeHandler(handler)
    result = CliRunner().invoke(predict_main, ["-i", str(pairs_path), "-o", str(out), "-m", str(model), "-npp", "0",
                                               "-nps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert len(list(out.glob("disp_*.nii.gz"))) == len(config["eval_pairs"])
    for path in out.glob("disp_*.nii.gz"):
        image = nib.load(str(path))
        assert list(image.shape) == config["expected_shape"] and image.get_data_dtype() == np.float32
    evaluated = CliRunner().invoke(evaluate_main, ["-i", str(out), "-d", str(root), "-c", str(config_path), "-o",
                                                   str(tmp_path / "metrics.json")], catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["cases"]) == len(config["eval_pairs"])
