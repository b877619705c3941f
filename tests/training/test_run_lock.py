"""One training per fold: a second ``nnreg_train`` of a fold that is running is refused (they wrote one log and
overwrote each other's checkpoints before); a lock left by a killed run is taken over; half-written checkpoints of a
killed run are removed when the fold starts again."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnreg.training.workspace import TrainingWorkspace
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import host_token
from nnreg.utilities.run_lock import LOCK_NAME, claim_run_lock


def test_the_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    lock.write_text(f"{host_token()} 1\n")                           # pid 1 runs
    with pytest.raises(NnregError, match="is being run by process 1 on this machine"):
        claim_run_lock(tmp_path, "fold 0")
    lock.write_text("0123abcd 42\n")                                  # another machine's: cannot be checked
    with pytest.raises(NnregError, match="another machine"):
        claim_run_lock(tmp_path, "fold 0")
    lock.write_text(f"{host_token()} 999999999\n")                   # a pid that cannot run: a killed run's
    assert claim_run_lock(tmp_path, "fold 0") == lock
    assert lock.read_text().split() == [host_token(), str(os.getpid())]
    assert claim_run_lock(tmp_path, "fold 0") == lock                 # the owner may claim it again


def test_a_fold_starts_with_its_lock_and_without_a_killed_runs_temporaries(tmp_path: Path) -> None:
    workspace = TrainingWorkspace("Dataset901_Tiny", tmp_path / "pre", tmp_path / "res",
                                  SimpleNamespace(plans_name="nnRegPlans"), "3d_fullres", "0", "nnRegTrainer", [], [])
    fold = workspace.fold_folder
    fold.mkdir(parents=True)
    stale = fold / f"checkpoint_best.tmp-{host_token()}-999999999-abcd1234.pth"
    stale.write_bytes(b"half a checkpoint")
    (workspace.model_folder / "fold_1").mkdir()
    (workspace.model_folder / "fold_1" / f"checkpoint_latest.tmp-{host_token()}-999999999-abcd1234.pth").write_text("")
    assert workspace.other_trained_folds() == []                    # a temporary is not a trained fold
    workspace.prepare_output()
    assert not stale.exists()
    assert (fold / LOCK_NAME).read_text().split() == [host_token(), str(os.getpid())]
    (fold / LOCK_NAME).write_text(f"{host_token()} 1\n")
    with pytest.raises(NnregError, match="fold 0 of nnRegTrainer__nnRegPlans__3d_fullres is being run"):
        workspace.prepare_output()
