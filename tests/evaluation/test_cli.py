"""``nnreg_evaluate`` through click: results in the official structure, and one-line errors on bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnreg.cli.evaluate import main
from nnreg.dataset.image_io import write_displacement
from tests.evaluation.conftest import SHAPE, label_map, write_volume


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    """The error must be exactly one ``nnreg: error:`` line and no traceback."""
    assert result.exit_code != 0
    text = result.output
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("nnreg: error:")]
    assert len(lines) == 1, text
    return lines[0]


def test_config_run_writes_official_structure(tiny_root: Path, zero_fields: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    result = run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json", "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    data = json.loads(text)
    assert list(data) == ["name", "aggregates", "cases", "eval_version"]
    assert list(data["cases"]) == ["0002_0000<--0001_0000", "0003_0000<--0002_0000"]
    assert sorted(data["aggregates"]) == ["DSC", "HD95", "Non-diffeomorphic Volumes", "TRE_lm"]
    assert set(data["aggregates"]["DSC"]) == {"mean", "std", "30"}
    case = data["cases"]["0002_0000<--0001_0000"]
    # labels 0, 1, 2, 7: background 1360/1376, slab 1, shifted cube 0.75, label 7 absent -> NaN
    assert case["DSC"]["mean"] == pytest.approx((1360 / 1376 + 1 + 0.75) / 3)
    assert math.isnan(case["DSC"]["detailed"][3]) and "NaN" in text  # written as the official json.dump does
    assert case["TRE_lm"]["mean"] == pytest.approx(0.5)
    assert case["Non-diffeomorphic Volumes"]["mean"] == 0.0
    assert "0002_0000<--0001_0000" in result.output  # the table


def test_dataset_mode_and_baseline(tiny_root: Path, zero_fields: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = run("-i", zero_fields, "-d", tiny_root, "-o", out, "--baseline-zero", "--mask", "fixed")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert sorted(data["aggregates"]) == ["DSC", "HD95", "Non-diffeomorphic Volumes", "TRE_lm"]
    assert len(data["cases"]["0002_0000<--0001_0000"]["DSC"]["detailed"]) == 3  # labels 0, 1, 2 in all images
    assert "->" in result.output
    zero = json.loads((tmp_path / "m_zero_displacement.json").read_text())   # zero fields: baseline == result
    assert zero["cases"] == data["cases"] and zero["aggregates"] == data["aggregates"]


def test_output_never_lands_on_raw_data_fields_or_configs(tiny_root: Path, zero_fields: Path) -> None:
    """-o over dataset.json, a label map, a config or one of the fields it reads: one line, every file as it was."""
    field = next(zero_fields.glob("*.nii.gz"))
    label = next(p for p in tiny_root.rglob("*.nii.gz"))
    before = {p: p.read_bytes() for p in (tiny_root / "dataset.json", tiny_root / "config.json", label, field)}
    for target, words in ((tiny_root / "dataset.json", "raw dataset"), (tiny_root / "config.json", "raw dataset"),
                          (label, ".json"), (field, ".json")):
        line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json", "-o", target))
        assert words in line, line
    outside = zero_fields.parent / "config_copy.json"
    outside.write_bytes(before[tiny_root / "config.json"])
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", outside, "-o", outside))
    assert "evaluation config" in line
    assert all(p.read_bytes() == data for p, data in before.items())


def test_a_ground_truth_folder_without_training_images(tiny_root: Path, zero_fields: Path, tmp_path: Path) -> None:
    """The official evaluator's ground-truth folder lists every training image but holds none: the validation
    pairs and their ground truth are all evaluation needs."""
    data = json.loads((tiny_root / "dataset.json").read_text())
    data["training"] += [{"image": f"./imagesTr/TINY_{i:04d}_0000.nii.gz"} for i in range(10, 13)]
    (tiny_root / "dataset.json").write_text(json.dumps(data))
    out = tmp_path / "gt_only.json"
    result = run("-i", zero_fields, "-d", tiny_root, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(out.read_text())["aggregates"]) == ["DSC", "HD95", "Non-diffeomorphic Volumes",
                                                                  "TRE_lm"]


def test_missing_displacement_is_named(tiny_root: Path, zero_fields: Path) -> None:
    (zero_fields / "disp_0003_0002.nii.gz").unlink()
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json"))
    assert "disp_0003_0002.nii.gz" in line and "missing" in line


def test_only_present_evaluates_the_fields_there_and_names_the_rest(tiny_root: Path, zero_fields: Path,
                                                                    tmp_path: Path, nnreg_log: list[str]) -> None:
    config = tiny_root / "config.json"
    whole = tmp_path / "whole.json"
    assert run("-i", zero_fields, "-d", tiny_root, "-c", config, "-o", whole, "--only-present").exit_code == 0
    complete = json.loads(whole.read_text())
    assert "missing_cases" not in complete           # every field there: the official structure, unchanged
    assert complete == json.loads(_evaluated(tiny_root, zero_fields, tmp_path / "plain.json"))
    (zero_fields / "disp_0003_0002.nii.gz").unlink()
    part = tmp_path / "part.json"
    nnreg_log.clear()
    result = run("-i", zero_fields, "-d", tiny_root, "-c", config, "-o", part, "--only-present", "--baseline-zero")
    assert result.exit_code == 0, result.output
    baseline = json.loads((tmp_path / "part_zero_displacement.json").read_text())
    assert baseline["missing_cases"] == ["0003_0000<--0002_0000"]    # the baseline file is partial too
    said = [line for line in nnreg_log if "evaluating 1 of 2 pairs" in line]
    assert len(said) == 1 and "0003_0000<--0002_0000" in said[0]
    data = json.loads(part.read_text())
    assert list(data["cases"]) == ["0002_0000<--0001_0000"]
    assert data["missing_cases"] == ["0003_0000<--0002_0000"]
    assert data["cases"]["0002_0000<--0001_0000"] == complete["cases"]["0002_0000<--0001_0000"]
    assert data["aggregates"]["TRE_lm"]["mean"] == pytest.approx(
        complete["cases"]["0002_0000<--0001_0000"]["TRE_lm"]["mean"])


def _evaluated(tiny_root: Path, fields: Path, out: Path) -> str:
    result = run("-i", fields, "-d", tiny_root, "-c", tiny_root / "config.json", "-o", out)
    assert result.exit_code == 0, result.output
    return out.read_text()


def test_only_present_without_any_field_is_one_line(tiny_root: Path, zero_fields: Path) -> None:
    for path in zero_fields.glob("disp_*"):
        path.unlink()
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json", "--only-present"))
    assert "no displacement file for any of the 2 pair(s)" in line


def test_wrong_shape(tiny_root: Path, zero_fields: Path) -> None:
    write_displacement(np.zeros((12, 14, 9, 3), np.float32), zero_fields / "disp_0002_0001.nii.gz")
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json"))
    assert "expected (12, 14, 10, 3)" in line and "found (12, 14, 9, 3)" in line


def test_nan_in_field(tiny_root: Path, zero_fields: Path) -> None:
    field = np.zeros(SHAPE + (3,), np.float32)
    field[1, 2, 3, 0] = np.nan
    write_displacement(field, zero_fields / "disp_0002_0001.nii.gz")
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json"))
    assert "NaN/inf" in line and "disp_0002_0001.nii.gz" in line


def test_label_on_another_grid(tiny_root: Path, zero_fields: Path) -> None:
    write_volume(label_map(1)[:, :, :9], tiny_root / "labelsVal" / "TINY_0002_0000.nii.gz")
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", tiny_root / "config.json"))
    assert "different grid" in line and "TINY_0002_0000.nii.gz" in line


def test_unknown_metric(tiny_root: Path, zero_fields: Path, tmp_path: Path) -> None:
    cfg = json.loads((tiny_root / "config.json").read_text())
    cfg["evaluation_methods"].append({"name": "J", "metric": "jaccard"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg))
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", bad))
    assert "unknown metric 'jaccard'" in line and "bad.json" in line


def test_vanished_label_is_reported_not_an_error(tiny_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "far"
    for name in ("disp_0002_0001.nii.gz", "disp_0003_0002.nii.gz"):
        write_displacement(np.full(SHAPE + (3,), 50.0, np.float32), folder / name)
    out = tmp_path / "m.json"
    result = run("-i", folder, "-d", tiny_root, "-c", tiny_root / "config.json", "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    case = json.loads(text)["cases"]["0002_0000<--0001_0000"]
    assert case["HD95"]["mean"] == math.inf and "Infinity" in text
    assert math.isnan(case["TRE_lm"]["mean"])
    assert "inf" in result.output and "nan" in result.output


def test_two_configs_on_the_same_pairs_are_merged(tiny_root: Path, zero_fields: Path, tmp_path: Path) -> None:
    """The official evaluator would keep only the second config's metrics for each pair; nnreg keeps both."""
    cfg = json.loads((tiny_root / "config.json").read_text())
    seg, lms = dict(cfg), dict(cfg)
    seg["evaluation_methods"] = cfg["evaluation_methods"][1:3]
    lms["evaluation_methods"] = [cfg["evaluation_methods"][0], cfg["evaluation_methods"][3]]
    lms["name"] = "landmarks"
    (tmp_path / "seg.json").write_text(json.dumps(seg))
    (tmp_path / "lms.json").write_text(json.dumps(lms))
    out = tmp_path / "m.json"
    result = run("-i", zero_fields, "-d", tiny_root, "-c", tmp_path / "seg.json", "-c", tmp_path / "lms.json",
                 "-o", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["name"] == "landmarks"
    for case in data["cases"].values():
        assert list(case) == ["DSC", "HD95", "Non-diffeomorphic Volumes", "TRE_lm"]


@pytest.fixture()
def nnreg_log() -> list[str]:
    """Messages of the ``nnreg`` logger (it does not propagate, so caplog does not see them)."""
    import logging

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.INFO)
    logging.getLogger("nnreg").addHandler(handler)
    yield messages
    logging.getLogger("nnreg").removeHandler(handler)


def test_a_bare_config_name_is_found_in_the_dataset_folder(tiny_root: Path, zero_fields: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            nnreg_log: list[str]) -> None:
    """evaluation.md shows ``-c NAME.json`` next to ``-d DATASET``: the challenge configs sit in the dataset folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "m.json"
    result = run("-i", zero_fields, "-d", tiny_root, "-c", "config.json", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(out.read_text())["aggregates"]) == ["DSC", "HD95", "Non-diffeomorphic Volumes", "TRE_lm"]
    assert any(str(tiny_root / "config.json") in m and "dataset folder" in m for m in nnreg_log), nnreg_log


def test_a_config_in_the_current_folder_comes_first(tiny_root: Path, zero_fields: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, nnreg_log: list[str]) -> None:
    cfg = json.loads((tiny_root / "config.json").read_text())
    cfg["evaluation_methods"] = cfg["evaluation_methods"][:1]    # NDV only: tells the two files apart
    here = tmp_path / "here"
    here.mkdir()
    (here / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(here)
    out = tmp_path / "m.json"
    result = run("-i", zero_fields, "-d", tiny_root, "-c", "config.json", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(out.read_text())["aggregates"]) == ["Non-diffeomorphic Volumes"]
    assert any(str(here / "config.json") in m and "current folder" in m for m in nnreg_log), nnreg_log


def test_a_config_in_neither_folder_is_one_line_naming_both(tiny_root: Path, zero_fields: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = error_line(run("-i", zero_fields, "-d", tiny_root, "-c", "nothing.json"))
    assert "nothing.json" in line and str(tmp_path) in line and str(tiny_root) in line


def test_lumir25_protocol(tiny_root: Path, zero_fields: Path, tmp_path: Path) -> None:
    """``--lumir25``: eval_version 3.0, TRE robustness at the 70th percentile, Dice per evaluation set named by the
    config file (MM_dice for a *MultiModal* config), NDV masked by the fixed image; the 2024 run keeps the 30th."""
    config = json.loads((tiny_root / "config.json").read_text())
    multimodal = dict(config, eval_pairs=config["eval_pairs"][:1],
                      evaluation_methods=[m for m in config["evaluation_methods"] if m["metric"] != "tre"])
    (tiny_root / "T_VAL_MultiModal_Segmentation_evaluation_config.json").write_text(json.dumps(multimodal))
    (tiny_root / "T_VAL_LUMIR24_Landmark_evaluation_config.json").write_text(json.dumps(config))
    shifted = np.zeros(SHAPE + (3,), np.float32)
    shifted[3:9, 3:8, 3:8, 0] = -1.0               # pair 3<-2: the moved landmark blob lands on the fixed one
    write_displacement(shifted, zero_fields / "disp_0003_0002.nii.gz")
    args = ["-i", zero_fields, "-d", tiny_root, "-c", "T_VAL_LUMIR24_Landmark_evaluation_config.json",
            "T_VAL_MultiModal_Segmentation_evaluation_config.json"]
    result = run(*args, "-o", tmp_path / "25.json", "--lumir25")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "25.json").read_text())
    assert data["eval_version"] == "3.0"
    tre = [case["TRE_lm"]["mean"] for case in data["cases"].values()]
    assert sorted(tre) == [0.0, 0.5]
    assert data["aggregates"]["TRE_lm"]["30"] == pytest.approx(float(np.quantile(tre, 0.7)))
    first = data["cases"]["0002_0000<--0001_0000"]["DSC"]["mean"]
    assert data["aggregates"]["MM_dice"] == {"mean": pytest.approx(first), "std": 0.0, "30": pytest.approx(first)}
    assert "MM_dice" in result.output
    assert run(*args, "-o", tmp_path / "24.json").exit_code == 0
    data24 = json.loads((tmp_path / "24.json").read_text())
    assert data24["eval_version"] == "2.0" and "MM_dice" not in data24["aggregates"]
    assert data24["aggregates"]["TRE_lm"]["30"] == pytest.approx(float(np.quantile(tre, 0.3)))


def test_lumir25_masks_ndv_by_the_fixed_image(tiny_root: Path, tmp_path: Path) -> None:
    from nnreg.evaluation.runner import evaluate_folder
    from nnreg.evaluation.config import load_config

    folder = tmp_path / "fold"
    field = np.zeros(SHAPE + (3,), np.float32)
    field[7:9, 5:7, 6:8, 0] = -2.5                 # a fold where only the fixed image has foreground
    for fix, mov in (("0002", "0001"), ("0003", "0002")):
        write_displacement(field, folder / f"disp_{fix}_{mov}.nii.gz")
    config = load_config(tiny_root / "config.json")
    run25 = run("-i", folder, "-d", tiny_root, "-c", tiny_root / "config.json", "-o", tmp_path / "a.json",
                "--lumir25")
    assert run25.exit_code == 0, run25.output
    fixed_mask = evaluate_folder(folder, tiny_root, [config], ndv_mask="fixed")
    ndv25 = json.loads((tmp_path / "a.json").read_text())["cases"]["0002_0000<--0001_0000"]
    moving_mask = evaluate_folder(folder, tiny_root, [config], ndv_mask="moving")
    key, name = "0002_0000<--0001_0000", "Non-diffeomorphic Volumes"
    assert ndv25[name]["mean"] == pytest.approx(fixed_mask.cases[key][name]["mean"])
    assert fixed_mask.cases[key][name]["mean"] != pytest.approx(moving_mask.cases[key][name]["mean"])
