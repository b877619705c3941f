"""End to end: nnreg_plan_and_preprocess through the CLI on a tiny dataset, and every output it promises."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnreg.cli.plan_and_preprocess import main
from nnreg.dataset.image_io import read_image
from nnreg.planning.plans import FINER_STAGE_INSTANCE_OPTIMIZATION, Plans
from nnreg.preprocessing.grid import GridMapping
from nnreg.preprocessing.storage import load_case
from nnreg.utilities.files import host_token
from tests.conftest import shared_dataset


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture()
def raw_tiny(tiny_dataset: Path, nnreg_env: dict[str, Path]) -> Path:
    dst = nnreg_env["raw"] / "Dataset901_Tiny"
    shutil.copytree(tiny_dataset, dst)
    return dst


def test_cli_writes_every_output(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    result = _run("-d", "901", "-np", "0")
    assert result.exit_code == 0, result.output
    out = nnreg_env["preprocessed"] / "Dataset901_Tiny"
    for name in ("dataset.json", "dataset_fingerprint.json", "nnRegPlans.json", "splits_final.json"):
        assert (out / name).is_file(), name
    fp = json.loads((out / "dataset_fingerprint.json").read_text())
    case = fp["cases"]["TINY_0000_0000"]
    assert case["shape"] == [32, 40, 32] and case["spacing"] == [1.0, 1.0, 1.0]
    assert set(case["intensity"]["percentiles"]) == {"0.5", "50.0", "99.5"}
    assert fp["same_grid"] is True and len(fp["union_foreground_bbox"]) == 3

    splits = json.loads((out / "splits_final.json").read_text())
    assert len(splits) == 5
    all_val = sorted(c for s in splits for c in s["val"])
    assert all_val == [f"TINY_{i:04d}_0000" for i in range(6)]
    assert all(not set(s["train"]) & set(s["val"]) for s in splits)

    plans = Plans.load(out / "nnRegPlans.json")
    assert set(plans.configurations) == {"3d_fullres", "3d_halfres"}
    for name, cfg in plans.configurations.items():
        divisor = 2 ** (cfg.architecture["kwargs"]["n_levels"] - 1)
        assert all(s % divisor == 0 for s in cfg.shape), (name, cfg.shape, divisor)
        assert cfg.normalization["scheme"] == "fixed_range"
        folder = out / cfg.data_identifier
        image, seg, meta = load_case(folder, "TINY_0003_0000")
        assert image.shape == tuple(cfg.shape) and seg.shape == tuple(cfg.shape)
        arr = image[...]
        assert arr.dtype == np.float32 and 0.0 <= arr.min() and arr.max() <= 1.0
        assert meta["original_geometry"]["shape"] == [32, 40, 32]
        mapping = GridMapping.from_json(meta["grid_mapping"])
        assert mapping.original_shape == (32, 40, 32)
    assert plans.configurations["3d_halfres"].spacing == [2.0, 2.0, 2.0]
    # a finer-grid stage follows 3d_halfres of 1 mm images, not 3d_fullres: its refinement gets the additions
    assert plans.configurations["3d_halfres"].instance_optimization.items() >= FINER_STAGE_INSTANCE_OPTIMIZATION.items()
    assert "fine_ncc_window" not in plans.configurations["3d_fullres"].instance_optimization
    assert "3d_fullres" in result.output and "done:" in result.output


def test_preprocessed_image_matches_an_independent_computation(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    assert _run("-d", "901", "-np", "0", "-c", "3d_fullres").exit_code == 0
    out = nnreg_env["preprocessed"] / "Dataset901_Tiny"
    cfg = Plans.load(out / "nnRegPlans.json").configuration("3d_fullres")
    image, _, _ = load_case(out / cfg.data_identifier, "TINY_0001_0000")
    raw, _ = read_image(raw_tiny / "imagesTr" / "TINY_0001_0000.nii.gz")
    expected = np.zeros(cfg.shape, np.float32)
    src = [slice(max(c, 0), min(c + s, n)) for c, s, n in zip(cfg.crop_start, cfg.shape, raw.shape)]
    dst = [slice(a.start - c, a.stop - c) for a, c in zip(src, cfg.crop_start)]
    expected[tuple(dst)] = raw[tuple(src)] / 255.0
    np.testing.assert_allclose(image[...], expected, atol=1e-6)


def test_rerun_skips_finished_work_and_repairs_an_interrupted_run(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    assert _run("-d", "901", "-np", "0").exit_code == 0
    out = nnreg_env["preprocessed"] / "Dataset901_Tiny"
    folder = out / "nnRegPlans_3d_fullres"
    done = folder / "TINY_0002_0000.b2nd"
    stamp = done.stat().st_mtime_ns
    # simulate a run killed mid-case: metadata gone, a temporary left behind, an array truncated
    (folder / "TINY_0004_0000.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / f"TINY_0004_0000.tmp-{host_token()}-{dead.pid}-abcd1234.b2nd").write_bytes(b"partial")
    (folder / "TINY_0004_0000.b2nd").write_bytes(b"truncated")
    assert _run("-d", "901", "-np", "0").exit_code == 0
    assert done.stat().st_mtime_ns == stamp                      # finished case untouched
    assert not list(folder.glob("*.tmp-*"))                      # leftovers removed
    image, _, _ = load_case(folder, "TINY_0004_0000")            # repaired case readable
    assert image[...].shape == tuple(Plans.load(out / "nnRegPlans.json").configuration("3d_fullres").shape)


def test_other_plans_identifiers_are_never_overwritten(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    assert _run("-d", "901", "-np", "0", "--no-pp").exit_code == 0
    out = nnreg_env["preprocessed"] / "Dataset901_Tiny"
    default = (out / "nnRegPlans.json").read_text()
    assert _run("-d", "901", "-np", "0", "--no-pp", "-p", "MyPlans").exit_code == 0
    assert (out / "MyPlans.json").is_file()
    assert (out / "nnRegPlans.json").read_text() == default
    assert not (out / "MyPlans_3d_fullres").exists()


def test_hand_edited_plans_win(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    assert _run("-d", "901", "-np", "0", "--no-pp").exit_code == 0
    path = nnreg_env["preprocessed"] / "Dataset901_Tiny" / "nnRegPlans.json"
    data = json.loads(path.read_text())
    data["configurations"]["3d_fullres"]["batch_size"] = 3
    path.write_text(json.dumps(data))
    assert _run("-d", "901", "-np", "0", "--no-pp").exit_code == 0
    assert Plans.load(path).configuration("3d_fullres").batch_size == 3


def test_user_splits_are_respected(raw_tiny: Path, nnreg_env: dict[str, Path]) -> None:
    ids = [f"TINY_{i:04d}_0000" for i in range(6)]
    mine = [{"train": ids[:4], "val": ids[4:]}, {"train": ids[2:], "val": ids[:2]}]
    (raw_tiny / "splits_final.json").write_text(json.dumps(mine))
    assert _run("-d", "901", "-np", "0", "--no-pp").exit_code == 0
    written = json.loads((nnreg_env["preprocessed"] / "Dataset901_Tiny" / "splits_final.json").read_text())
    assert written == mine


@pytest.mark.parametrize("problem, expected", [
    ("nan", "contains NaN"),
    ("zero", "all zero"),
    ("4d", "expected a 3D single-channel image"),
])
def test_bad_images_give_one_line_and_nonzero_exit(raw_tiny: Path, nnreg_env: dict[str, Path], problem: str,
                                                    expected: str) -> None:
    import SimpleITK as sitk

    path = raw_tiny / "imagesTr" / "TINY_0002_0000.nii.gz"
    arr, geo = read_image(path)
    if problem == "nan":
        arr[3, 3, 3] = np.nan
    elif problem == "zero":
        arr[:] = 0
    if problem == "4d":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 4, 4), np.float32)), str(path))
    else:
        from nnreg.dataset.image_io import write_image
        write_image(arr, geo, path)
    result = CliRunner().invoke(main, ["-d", "901", "-np", "0"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "TINY_0002_0000.nii.gz" in lines[0], result.output
    assert not (nnreg_env["preprocessed"] / "Dataset901_Tiny").exists()   # not even its dataset.json copy


def test_unknown_dataset_and_unset_paths(nnreg_env: dict[str, Path], monkeypatch) -> None:
    result = CliRunner().invoke(main, ["-d", "777"])
    assert result.exit_code != 0 and "no dataset with id 777" in result.output
    monkeypatch.delenv("nnReg_preprocessed")
    (nnreg_env["raw"] / "Dataset778_X").mkdir()
    result = CliRunner().invoke(main, ["-d", "778"])
    assert result.exit_code != 0 and "missing dataset.json" in result.output


@pytest.mark.shared_data
def test_openbrains80_plans_and_preprocesses(nnreg_env: dict[str, Path]) -> None:
    src = shared_dataset("OpenBrains80")
    (nnreg_env["raw"] / "Dataset500_OpenBrains80").symlink_to(src)
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}
    result = _run("-d", "500", "-np", "2")
    assert result.exit_code == 0, result.output
    out = nnreg_env["preprocessed"] / "Dataset500_OpenBrains80"
    plans = Plans.load(out / "nnRegPlans.json")
    full = plans.configuration("3d_fullres")
    assert full.spacing == [2.0, 2.0, 2.0]
    assert len(list((out / full.data_identifier).glob("*_seg.b2nd"))) == 8
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()} == before   # raw data untouched


def test_a_second_run_of_one_dataset_is_refused_while_the_first_runs(raw_tiny: Path,
                                                                       nnreg_env: dict[str, Path]) -> None:
    from nnreg.utilities.run_lock import LOCK_NAME

    out = nnreg_env["preprocessed"] / "Dataset901_Tiny"
    out.mkdir(parents=True)
    (out / LOCK_NAME).write_text(f"{host_token()} 1\n")                  # a live process (pid 1) runs it
    result = CliRunner().invoke(main, ["-d", "901", "-np", "0"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "planning and preprocessing of Dataset901_Tiny is being run by process 1" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]          # nothing written beside it
    (out / LOCK_NAME).write_text(f"{host_token()} 999999999\n")          # a killed run's lock is taken over
    assert _run("-d", "901", "-np", "0").exit_code == 0
    assert not (out / LOCK_NAME).exists() and (out / "nnRegPlans.json").is_file()   # released at the end
