"""Atomic writes: the target appears complete or not at all, with normal permissions."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import atomic_path, read_json, remove_stale_temporaries, write_json


def test_failed_write_leaves_no_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_the_old_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    write_json({"k": 1}, target)
    assert read_json(target) == {"k": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_are_removed_and_bad_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "case.tmp-abc.b2nd").write_bytes(b"x")
    (tmp_path / "keep.b2nd").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.b2nd"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(NnregError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
