"""dataset.json parsing, naming rules and dataset lookup, including every bad-input case."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nnreg.dataset import find_raw_dataset, load_dataset, resolve_dataset_name
from nnreg.dataset.naming import case_key, challenge_id_and_modality, displacement_filename
from nnreg.utilities.errors import ConfigurationError, DatasetError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_parses_training_pool_and_pairs(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    assert [e.case_id for e in ds.training] == [f"TINY_{i:04d}_0000" for i in range(6)]
    assert len(ds.validation) == 6
    pair = ds.validation[0]
    assert pair.fixed.path.is_file() and pair.moving.path.is_file()
    assert pair.fixed.labels_path() == tiny_dataset / "labelsVal" / pair.fixed.path.name
    assert pair.fixed.landmarks_path() == tiny_dataset / "landmarksVal" / pair.fixed.path.name
    assert ds.tensor_shape == (32, 40, 32)
    assert ds.has_training_labels()


def test_a_learn2reg_download_named_json_is_found(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path / "LUMIR_L2R24")
    (root / "dataset.json").rename(root / "LUMIR_dataset.json")
    ds = load_dataset(root)
    assert ds.json_path.name == "LUMIR_dataset.json" and len(ds.training) == 6
    (root / "OTHER_dataset.json").write_text("{}")
    with pytest.raises(DatasetError, match="missing dataset.json"):
        load_dataset(root)


def test_official_naming_rules() -> None:
    assert challenge_id_and_modality("imagesVal/LUMIRMRI_3455_0000.nii.gz") == ("3455", "0000")
    assert displacement_filename("a/LUMIRMRI_3455_0000.nii.gz", "a/LUMIRMRI_3454_0000.nii.gz") == "disp_3455_3454.nii.gz"
    # LUMIR 2025: a T1 fixed (0000) and a 0001 moving image keep the short name, the only one its evaluator reads
    assert displacement_filename("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz") == "disp_0001_0002.nii.gz"
    assert displacement_filename("a/X_0001_0001.nii.gz", "a/X_0002_0000.nii.gz") == "disp_0001_0001_0002_0000.nii.gz"
    assert displacement_filename("a/X_0001_0000.nii.gz", "a/X_0002_0002.nii.gz") == "disp_0001_0000_0002_0002.nii.gz"
    assert case_key("OBR_0009_0000.nii.gz", "OBR_0008_0000.nii.gz") == "0009_0000<--0008_0000"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda root: (root / "dataset.json").unlink(), "missing dataset.json"),
        (lambda root: (root / "dataset.json").write_text("{not json"), "not valid JSON"),
        (lambda root: _edit(root, lambda d: d.pop("training")), "lacks the 'training' list"),
        (lambda root: _edit(root, lambda d: d["training"].append({"image": "./imagesTr/NOPE_0000.nii.gz"})),
         "NOPE_0000.nii.gz, which does not exist"),
        (lambda root: (root / "imagesVal" / "TINY_0006_0000.nii.gz").unlink(), "TINY_0006_0000.nii.gz, which does not exist"),
        (lambda root: _edit(root, lambda d: d["validation"].append({"fixed": "./imagesVal/TINY_0006_0000.nii.gz"})),
         "must have 'fixed' and 'moving'"),
        (lambda root: _edit(root, lambda d: d.update(modality=5)), "'modality' must be an object"),
        (lambda root: _edit(root, lambda d: d.update(modality=["T1w"])), "'modality' must be an object"),
        (lambda root: _edit(root, lambda d: d.update(tensorImageShape=24)), "'tensorImageShape' must be an object"),
        (lambda root: _edit(root, lambda d: d.update(tensorImageShape={"0": "abc"})), "three positive integers"),
    ],
)
def test_bad_dataset_json_gives_one_line_naming_the_file(tiny_dataset: Path, tmp_path: Path, mutate, message) -> None:
    root = _copy(tiny_dataset, tmp_path / "Dataset901_Tiny")
    mutate(root)
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    text = str(info.value)
    assert message in text
    assert "dataset.json" in text
    assert "\n" not in text


def _edit(root: Path, fn) -> None:
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_dataset_lookup_by_id_name_and_path(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "Dataset901_Tiny").symlink_to(tiny_dataset)
    monkeypatch.setenv("nnReg_raw", str(raw))
    assert find_raw_dataset("901") == raw / "Dataset901_Tiny"
    assert find_raw_dataset("Dataset901_Tiny") == raw / "Dataset901_Tiny"
    assert find_raw_dataset(str(tiny_dataset)) == tiny_dataset.resolve()
    with pytest.raises(DatasetError, match="no dataset with id 902"):
        find_raw_dataset("902")
    (raw / "Dataset901_Other").mkdir()
    with pytest.raises(DatasetError, match="two datasets have id 901"):
        resolve_dataset_name("901", raw)


def test_unset_raw_folder_says_what_to_set(monkeypatch) -> None:
    monkeypatch.delenv("nnReg_raw", raising=False)
    with pytest.raises(ConfigurationError, match=r"export nnReg_raw=.* or pass --raw"):
        find_raw_dataset("500")
