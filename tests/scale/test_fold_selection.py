"""fold_all is ensembled only when asked for (nnU-Net's convention), or when it is the only fold."""
from __future__ import annotations

from pathlib import Path

from nnreg.inference.model_folder import select_folds


def _folds(folder: Path, *names: str) -> None:
    for name in names:
        (folder / f"fold_{name}").mkdir(parents=True)
        (folder / f"fold_{name}" / "checkpoint_final.pth").write_bytes(b"x")


def test_fold_all_only_when_asked_for(tmp_path: Path) -> None:
    _folds(tmp_path, "0", "1", "all")
    assert select_folds(tmp_path, None, "checkpoint_final.pth") == ["0", "1"]
    assert select_folds(tmp_path, ["all"], "checkpoint_final.pth") == ["all"]
    assert select_folds(tmp_path, ["0", "1", "all"], "checkpoint_final.pth") == ["0", "1", "all"]


def test_fold_all_alone_is_used(tmp_path: Path) -> None:
    _folds(tmp_path, "all")
    assert select_folds(tmp_path, None, "checkpoint_final.pth") == ["all"]
