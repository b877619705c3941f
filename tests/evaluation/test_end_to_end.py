"""End to end on ../shared/data/OpenBrains80: zero fields reproduce the data set README's table.

Per pair, Dice (2 mm column, 4 decimals) and TRE (2-mm voxels, 2 decimals) of the zero-displacement
table; aggregate zero-displacement HD95 2.80 (2-mm voxels) from its classical-registration table. Both
official configs are passed (Segmentation, then Landmark), so the merge must keep Dice/HD95 and TRE.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnreg.dataset.image_io import write_displacement

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA = SHARED / "OpenBrains80"

# fixed <- moving: (Dice 2 mm, TRE in 2-mm voxels), from shared/data/README.md
README_ZERO = {
    ("0008", "0009"): (0.5301, 1.71), ("0008", "0010"): (0.5974, 1.47), ("0008", "0011"): (0.5591, 1.67),
    ("0009", "0008"): (0.5301, 1.71), ("0009", "0010"): (0.5115, 1.66), ("0009", "0011"): (0.4851, 1.94),
    ("0010", "0008"): (0.5974, 1.47), ("0010", "0009"): (0.5115, 1.66), ("0010", "0011"): (0.6235, 1.33),
    ("0011", "0008"): (0.5591, 1.67), ("0011", "0009"): (0.4851, 1.94), ("0011", "0010"): (0.6235, 1.33),
}

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "dataset.json").is_file(), reason=f"shared data set {DATA} not present"),
]


def test_zero_fields_reproduce_readme(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nnreg.cli.evaluate import main

    disp = tmp_path / "disp"
    for fix, mov in README_ZERO:
        write_displacement(np.zeros((80, 112, 96, 3), np.float32), disp / f"disp_{fix}_{mov}.nii.gz")
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(main, [
        "-i", str(disp), "-d", str(DATA), "-o", str(out),
        "-c", str(DATA / "OBR80_VAL_Segmentation_evaluation_config.json"),
        "-c", str(DATA / "OBR80_VAL_Landmark_evaluation_config.json")])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["cases"]) == 12
    for (fix, mov), (dice, tre) in README_ZERO.items():
        case = data["cases"][f"{fix}_0000<--{mov}_0000"]
        assert case["DSC"]["mean"] == pytest.approx(dice, abs=5e-5), (fix, mov)
        assert case["TRE_lm"]["mean"] == pytest.approx(tre, abs=5e-3), (fix, mov)
        assert case["Non-diffeomorphic Volumes"]["mean"] == 0.0
    assert data["aggregates"]["DSC"]["mean"] == pytest.approx(0.5511, abs=5e-5)
    assert data["aggregates"]["TRE_lm"]["mean"] == pytest.approx(1.63, abs=5e-3)
    assert data["aggregates"]["HD95"]["mean"] == pytest.approx(2.80, abs=5e-3)
