"""predict_pairs on failure: the first error reaches the user (a writer failing to close never replaces it), and
the start-up cleanup deletes only nnreg's orphaned temporaries in the folders a run writes."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnreg.dataset.image_io import write_image
from nnreg.inference import PairSpec, predict_pairs
from nnreg.inference import pipeline
from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import host_token

from tests.inference.test_pipeline import GEOMETRY, SHAPE, _predictor


def _pairs(folder: Path) -> list[PairSpec]:
    paths = []
    for k in range(2):
        paths.append(folder / f"P_{k:04d}_0000.nii.gz")
        write_image(np.full(SHAPE, 50.0 + k, np.float32), GEOMETRY, paths[-1])
    return [PairSpec(paths[0], paths[1])]


class _WriterThatFailsToClose:
    def __init__(self, num_workers: int) -> None:
        self.done: list[str] = []

    def submit(self, job: object) -> None:
        pass

    def close(self) -> None:
        raise RuntimeError("close failed")


def test_a_failing_close_does_not_hide_the_original_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = _predictor()

    def broken(prepared: object, settings: object = None) -> np.ndarray:
        raise NnregError("the network failed on this pair")

    messages: list[str] = []

    class _Collect(logging.Handler):   # the nnreg logger may not propagate (the CLI sets it up), so no caplog
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    monkeypatch.setattr(predictor, "predict_prepared", broken)
    monkeypatch.setattr(pipeline, "BackgroundWriter", _WriterThatFailsToClose)
    pipeline.logger.addHandler(handler)
    try:
        with pytest.raises(NnregError, match="the network failed on this pair") as info:
            predict_pairs(predictor, _pairs(tmp_path), tmp_path / "out", num_writers=1, progress=False)
    finally:
        pipeline.logger.removeHandler(handler)
    assert str(info.value) == "the network failed on this pair"          # the CLI's one line is unchanged
    assert any("close failed" in m for m in messages), messages
    assert any("close failed" in note for note in getattr(info.value, "__notes__", [])), "not noted on the error"


class _ErrorWithoutNotes(NnregError):
    """An error as Python 3.10 makes it (nnreg supports 3.10): no ``add_note``."""

    @property
    def add_note(self) -> None:  # type: ignore[override]
        raise AttributeError("add_note")


def test_the_original_error_survives_a_failing_close_without_add_note(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = _predictor()

    def broken(prepared: object, settings: object = None) -> np.ndarray:
        raise _ErrorWithoutNotes("the network failed on this pair")

    monkeypatch.setattr(predictor, "predict_prepared", broken)
    monkeypatch.setattr(pipeline, "BackgroundWriter", _WriterThatFailsToClose)
    with pytest.raises(_ErrorWithoutNotes, match="the network failed on this pair"):
        predict_pairs(predictor, _pairs(tmp_path), tmp_path / "out", num_writers=1, progress=False)


def test_a_failing_close_after_success_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "BackgroundWriter", _WriterThatFailsToClose)
    with pytest.raises(RuntimeError, match="close failed"):
        predict_pairs(_predictor(), _pairs(tmp_path), tmp_path / "out", num_writers=1, progress=False)


def test_start_up_cleanup_spares_user_files(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    orphan = f"disp_0009_0008.tmp-{host_token()}-{child.pid}-ab12cd34.nii.gz"
    out = tmp_path / "out"
    user_files = [out / "notes.tmp-draft.txt", out / "sub" / "notes.tmp-draft.txt", out / "sub" / orphan,
                  out / "itk" / "old" / orphan, out / "a.tmp-12345678-1-x.txt"]
    orphans = [out / orphan, out / "itk" / orphan, out / "inverse" / orphan, out / "qc" / orphan]
    for path in user_files + orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    predict_pairs(_predictor(), _pairs(tmp_path), out, num_writers=0, progress=False)
    assert all(p.is_file() for p in user_files)
    assert not any(p.exists() for p in orphans)
    assert (out / "disp_0000_0001.nii.gz").is_file()
    assert pipeline.output_subfolders(out) == ("", "itk", "warped", "warped_labels", "qc", "inverse", "affine")
