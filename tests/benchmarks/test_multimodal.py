"""benchmarks/multimodal.py on a tiny synthetic dataset: synthetic contrasts are written with the LUMIR 2025 modality
suffix and keep the geometry, every method is scored on every contrast with its T1 reference, a missing anchor
package is a row, and the MIND refinement beats the zero field on a T2-like pair."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnreg.dataset.image_io import read_image
from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset

multimodal = load_benchmark("multimodal")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_learn2reg_dataset(tmp_path_factory.mktemp("mm") / "Tiny", shape=(24, 28, 24), n_train=3, n_val=2)


def test_synthetic_moving_images_keep_the_geometry_and_are_named_by_modality(tiny: Path, tmp_path: Path) -> None:
    fixed, moving = multimodal.benchmark_pairs(tiny, "val", None)[0]
    path = multimodal.make_moving(moving, "t2", 0, tmp_path)
    assert path.name.endswith("_0001.nii.gz") and multimodal.make_moving(moving, "t1", 0, tmp_path) == Path(moving.path)
    t2, geometry = read_image(path)
    t1, t1_geometry = read_image(moving.path)
    assert geometry == t1_geometry and np.array_equal(t2 > 0, t1 > 0)
    assert not np.allclose(t2 / t2.max(), t1 / t1.max())


def test_every_method_and_contrast_is_scored(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"steps": 40, "fine_steps": 0, "lr": 0.2, "patience": 40, "mind_dilation": 1}     # settings for tiny images
    monkeypatch.setattr(multimodal, "REFINEMENT", multimodal.REFINEMENT.with_overrides(small))
    monkeypatch.setitem(multimodal.ANCHORS, "ants_syn_mi",
                        multimodal.anchor_tools.Anchor("ants_syn_mi", "x", "no_such_module_xyz", "nothing",
                                                       multimodal.anchor_tools.ants))
    result = multimodal.main(["--dataset", str(tiny), "--contrasts", "t2", "--max-pairs", "1", "--output",
                              str(tmp_path / "out"), "--json", str(tmp_path / "mm.json"),
                              "--anchors", "demons,ants_syn_mi", "--threads", "1"])
    table = {(e["method"], e["contrast"]): e for e in result["table"]}
    assert set(table) == {(m, c) for m in ("refine_lncc", "refine_mind", "demons", "zero") for c in ("t1", "t2")}
    assert result["not_installed"] == ["ants_syn_mi"]
    assert table[("refine_mind", "t2")]["dice"] > table[("zero", "t2")]["dice"] + 0.02
    assert table[("zero", "t2")]["dice"] == pytest.approx(table[("zero", "t1")]["dice"])   # same labels, same field
    assert table[("refine_lncc", "t1")]["dice_vs_t1"] == 1.0
    assert json.loads((tmp_path / "mm.json").read_text())["table"] == json.loads(json.dumps(result["table"]))


def test_model_mind_row_runs_the_multimodal_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``nnreg_mind`` row asks ``nnreg_predict`` for the multi-modal default's keys (with ``--mind-settings``),
    not MIND with the plans' local-NCC regulariser (under which it does not move); ``nnreg_lncc`` for local NCC."""
    calls: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> None:
        calls.append(command)
        out = Path(command[command.index("-o") + 1])
        out.mkdir(parents=True, exist_ok=True)
        name = multimodal.displacement_filename(command[command.index("--fixed") + 1],
                                                command[command.index("--moving") + 1])
        (out / name).write_bytes(b"")

    monkeypatch.setattr(multimodal.subprocess, "run", fake_run)
    fixed, moving = tmp_path / "OBR_0001_0000.nii.gz", tmp_path / "OBR_0002_0001.nii.gz"
    for similarity in ("mind", "lncc"):
        method = multimodal.nnreg_predict_method(tmp_path / "model", similarity, tmp_path / "work",
                                                 {"remap_steps": 7})
        method(fixed, moving, tmp_path / similarity / "field.nii.gz")
        assert (tmp_path / similarity / "field.nii.gz").is_file()
    mind, lncc = (dict(item.split("=") for item in c[c.index("--instance-optimization-settings") + 1].split(","))
                  for c in calls)
    expected = {k: str(v) for k, v in multimodal.MULTIMODAL_REFINEMENT.items()}
    assert mind == {**expected, "remap_steps": "7"} and lncc == {"similarity": "lncc"}
