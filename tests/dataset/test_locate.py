"""Every command that takes a dataset accepts an id, a name or a path to the dataset folder (dataset_format.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nnreg.dataset.locate import resolve_dataset_name
from nnreg.utilities.errors import DatasetError


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path]:
    raw, pre = tmp_path / "elsewhere" / "data", tmp_path / "pre"
    (raw / "Dataset777_Mine").mkdir(parents=True)
    (pre / "Dataset777_Mine").mkdir(parents=True)
    return raw, pre


def test_a_path_resolves_to_the_folder_name_in_the_search_root(roots: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw, pre = roots
    monkeypatch.chdir(tmp_path)
    for spec in (str(raw / "Dataset777_Mine"), str(raw / "Dataset777_Mine") + "/", "elsewhere/data/Dataset777_Mine",
                 "./elsewhere/data/Dataset777_Mine", "elsewhere/data/../data/Dataset777_Mine"):
        assert resolve_dataset_name(spec, pre) == "Dataset777_Mine", spec
    monkeypatch.chdir(raw / "Dataset777_Mine")
    assert resolve_dataset_name(".", pre) == "Dataset777_Mine"
    assert resolve_dataset_name("777", pre) == "Dataset777_Mine"
    assert resolve_dataset_name("Dataset777_Mine", pre) == "Dataset777_Mine"


def test_a_path_not_in_the_search_root_is_one_line(roots: tuple[Path, Path]) -> None:
    raw, pre = roots
    (raw / "Dataset778_New").mkdir()
    with pytest.raises(DatasetError) as info:
        resolve_dataset_name(str(raw / "Dataset778_New"), pre)
    message = str(info.value)
    assert "\n" not in message and "Dataset778_New" in message and str(pre) in message


def test_the_documented_minimum_is_the_planners() -> None:
    """check_training_pool's 5 is the number of folds planning makes: the two cannot drift apart."""
    from nnreg.dataset.learn2reg import CROSS_VALIDATION_FOLDS
    from nnreg.preprocessing.splits import make_splits

    ids = [f"X_{i:04d}_0000" for i in range(CROSS_VALIDATION_FOLDS)]
    assert len(make_splits(ids)) == CROSS_VALIDATION_FOLDS
    with pytest.raises(DatasetError):
        make_splits(ids[:-1])
