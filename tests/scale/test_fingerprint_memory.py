"""The fingerprint keeps a bounded number of samples in the parent, whatever the number of images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnreg.dataset.image_io import read_image
from nnreg.dataset.learn2reg import load_dataset
from nnreg.fingerprint import extract


def test_samples_per_image_keep_the_total_bounded() -> None:
    assert extract.samples_per_image(8) == extract.MAX_SAMPLES_PER_IMAGE
    assert extract.samples_per_image(3384) * 3384 <= extract.POOLED_SAMPLES
    assert extract.samples_per_image(10 ** 8) == 1


def test_pooled_values_stay_sensible_with_few_samples(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mean and std are exact (independent: all foreground voxels concatenated); percentiles from 100 samples
    per image stay close to the exact ones."""
    dataset = load_dataset(tiny_dataset)
    values = np.concatenate([a[a != 0] for a, _ in (read_image(e.path) for e in dataset.training)]).astype(np.float64)
    monkeypatch.setattr(extract, "POOLED_SAMPLES", 100 * len(dataset.training))
    fingerprint = extract.extract_fingerprint(dataset, num_processes=0)
    intensity = fingerprint["intensity"]
    assert intensity["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert intensity["std"] == pytest.approx(values.std(), rel=1e-9)
    exact = np.percentile(values, [50.0, 99.5])
    assert intensity["percentiles"]["50.0"] == pytest.approx(exact[0], rel=0.1)
    assert intensity["percentiles"]["99.5"] == pytest.approx(exact[1], rel=0.1)
    assert all("_sample" not in case and "_count" not in case for case in fingerprint["cases"].values())
