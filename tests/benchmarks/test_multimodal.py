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
