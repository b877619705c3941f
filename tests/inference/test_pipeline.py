"""The many-pairs pipeline: worker processes surface their errors; back-pressure keeps exports bounded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnreg.dataset.image_io import Geometry, write_image
from nnreg.inference import ExportOptions, PairSpec, nnRegPredictor, predict_pairs
from nnreg.inference.export import ExportJob, pair_outputs
from nnreg.inference.pipeline import BackgroundWriter
from nnreg.planning.plans import ConfigurationPlan
from nnreg.utilities.errors import NnregError
from tests.inference.helpers import OracleNet

SHAPE = (12, 14, 10)
GEOMETRY = Geometry(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _predictor() -> nnRegPredictor:
    config = ConfigurationPlan(
        data_identifier="t", spacing=[1.0] * 3, resampling_factor=[1.0] * 3, resampled_shape=list(SHAPE),
        crop_start=[0, 0, 0], shape=list(SHAPE), normalization={"scheme": "fixed_range", "lower": 0, "upper": 255},
        batch_size=1, architecture={})
    return nnRegPredictor(num_threads=1).manual_initialization(OracleNet(np.ones((3, *SHAPE), np.float32)), config)


def _images(folder: Path, count: int, nan_in: int | None = None) -> list[Path]:
    paths = []
    for k in range(count):
        array = np.full(SHAPE, 50.0 + k, np.float32)
        if k == nan_in:
            array[1, 2, 3] = np.nan
        paths.append(folder / f"P_{k:04d}_0000.nii.gz")
        write_image(array, GEOMETRY, paths[-1])
    return paths


def test_reader_worker_error_is_one_line(tmp_path: Path) -> None:
    images = _images(tmp_path, 3, nan_in=2)
    pairs = [PairSpec(images[0], images[1]), PairSpec(images[1], images[2])]
    with pytest.raises(NnregError, match="NaN"):
        predict_pairs(_predictor(), pairs, tmp_path / "out", num_readers=1, num_writers=1, progress=False)
    # the first pair was finished and written before the failing one
    assert (tmp_path / "out" / "disp_0000_0001.nii.gz").is_file()
    assert not list((tmp_path / "out").rglob("*.tmp-*"))


def test_writer_worker_error_reaches_the_caller(tmp_path: Path) -> None:
    outputs = pair_outputs(tmp_path, "P_0000_0000.nii.gz", "P_0001_0000.nii.gz")
    outputs.displacement.mkdir(parents=True)          # a folder where the file must go: the rename fails
    writer = BackgroundWriter(1)
    writer.submit(ExportJob(outputs, ExportOptions(), np.zeros((*SHAPE, 3), np.float32), GEOMETRY))
    with pytest.raises(OSError):
        writer.close()


def test_inline_pipeline_matches_predict_pair_and_continue_skips(tmp_path: Path) -> None:
    images = _images(tmp_path, 3)
    pairs = [PairSpec(images[0], images[1]), PairSpec(images[2], images[0])]
    predictor = _predictor()
    summary = predict_pairs(predictor, pairs, tmp_path / "out", ExportOptions(), num_readers=0, num_writers=0,
                            progress=False)
    assert sorted(summary.written) == ["disp_0000_0001.nii.gz", "disp_0002_0000.nii.gz"]
    again = predict_pairs(predictor, pairs, tmp_path / "out", resume=True, num_writers=0, progress=False)
    assert again.written == [] and len(again.skipped) == 2
    duplicate = [PairSpec(images[0], images[1]), PairSpec(images[0], images[1])]
    with pytest.raises(NnregError, match="both be written"):
        predict_pairs(predictor, duplicate, tmp_path / "out2", progress=False)
