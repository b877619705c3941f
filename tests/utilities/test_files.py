"""Atomic writes: the target appears complete or not at all, with normal permissions; the start-up cleanup
deletes only nnreg's own orphaned temporaries, at the depths nnreg writes into."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import (atomic_path, host_token, is_nnreg_temporary, read_json, remove_stale_temporaries,
                                   write_json)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _orphan_name(stem: str = "disp_0001_0002", suffixes: str = ".nii.gz") -> str:
    """A temporary name exactly as atomic_path makes it, owned by a dead process of this host."""
    return f"{stem}.tmp-{host_token()}-{_dead_pid()}-k3x9_a0q{suffixes}"


def test_failed_write_leaves_no_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            assert is_nnreg_temporary(tmp.name)
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_success_replaces_the_old_file_with_umask_permissions(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    old = os.umask(umask)
    try:
        write_json({"k": 1}, target)
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert read_json(target) == {"k": 1}
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_never_changes_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.umask(0)`` for a moment is a race: a file another thread creates meanwhile gets mode 0666."""
    def forbidden(mask: int) -> int:
        raise AssertionError(f"atomic_path set the process umask to {mask:o}")

    monkeypatch.setattr(os, "umask", forbidden)
    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "a.json").read_text() == "{}"


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(NnregError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_orphaned_nnreg_temporaries_go_and_user_files_stay(tmp_path: Path) -> None:
    """Only names atomic_path makes, of a dead process of this host, directly in the folders named, are deleted."""
    orphans = [tmp_path / _orphan_name(), tmp_path / "itk" / _orphan_name(), tmp_path / _orphan_name("plans", ".json"),
               tmp_path / _orphan_name("checkpoint_latest", ".pth"), tmp_path / _orphan_name("LICENSE", "")]
    user_files = [
        tmp_path / "notes.tmp-draft.txt",                              # a user's file with ".tmp-" in its name
        tmp_path / "sub" / "notes.tmp-draft.txt",
        tmp_path / "a.tmp-12345678-1-x.txt",                           # looks like an owner, not our pattern
        tmp_path / "case.tmp-abc.b2nd",                                # no owner: not nnreg's
        tmp_path / f"x.tmp-{host_token()}-{_dead_pid()}-short.nii.gz",  # random part not mkstemp's 8 characters
        tmp_path / "sub" / _orphan_name(),                             # our pattern in a folder nnreg does not write
        tmp_path / "itk" / "deeper" / _orphan_name(),                  # our pattern below the depth nnreg writes
        tmp_path / f"keep.tmp-0000ffff-{_dead_pid()}-k3x9_a0q.nii.gz",  # another host's: its owner may be alive
        tmp_path / "keep.b2nd",
    ]
    for path in orphans + user_files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "dir.tmp-folder").mkdir()
    assert remove_stale_temporaries(tmp_path, subfolders=("", "itk")) == len(orphans)
    assert not any(p.exists() for p in orphans)
    assert all(p.is_file() for p in user_files)
    assert (tmp_path / "dir.tmp-folder").is_dir()


def test_default_looks_only_at_the_folder_itself(tmp_path: Path) -> None:
    top, below = tmp_path / _orphan_name(), tmp_path / "itk" / _orphan_name()
    below.parent.mkdir()
    top.write_bytes(b"x")
    below.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not top.exists() and below.is_file()
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_a_live_runs_temporary_is_kept(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "disp_0001_0002.nii.gz") as tmp:   # this (live) process owns it
        tmp.write_bytes(b"half")
        assert remove_stale_temporaries(tmp_path) == 0
        assert tmp.is_file()
    assert (tmp_path / "disp_0001_0002.nii.gz").read_bytes() == b"half"


def test_a_failed_write_names_the_file_being_written(tmp_path, monkeypatch) -> None:
    """A full disk: one ``nnreg: error: <file>: No space left on device`` line needs the target's name, whatever the
    writer raised (no name, its source's name, or a RuntimeError of torch.save / blosc2)."""
    import errno
    import shutil
    from types import SimpleNamespace

    import pytest

    from nnreg.utilities import files

    target = tmp_path / "out.bin"
    for raised in (OSError(errno.ENOSPC, "No space left on device"),
                   OSError(errno.ENOSPC, "No space left on device", "/the/source")):
        with pytest.raises(OSError) as info, files.atomic_path(target):
            raise raised
        assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    with pytest.raises(RuntimeError), files.atomic_path(target):    # plenty of room: the writer's own error
        raise RuntimeError("unexpected pos")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=100, used=100, free=0))
    with pytest.raises(OSError) as info, files.atomic_path(target):
        raise RuntimeError("unexpected pos")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
