"""fixed_range normalisation of an image in other units (issue 23 item 4): standardised with a warning, never a
white blob or a black one; an image in the training range keeps exactly the training normalisation."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from nnreg.preprocessing.normalization import foreign_range, normalize

SCHEME = {"scheme": "fixed_range", "lower": 0.0, "upper": 255.0,
          "reference_percentiles": {"0.5": 50.0, "50.0": 155.0, "99.5": 239.0}}


@pytest.fixture()
def warnings(caplog: pytest.LogCaptureFixture):
    """The nnreg logger's records (the CLI's logging set-up stops propagation to the root logger)."""
    logger = logging.getLogger("nnreg")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="nnreg")
    yield caplog
    logger.removeHandler(caplog.handler)


def _brain(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((24, 24, 24), np.float32)
    image[4:20, 4:20, 4:20] = rng.uniform(50, 239, (16, 16, 16))
    return image


def test_image_in_range_keeps_the_training_normalisation(warnings: pytest.LogCaptureFixture) -> None:
    image = _brain()
    out = normalize(image, SCHEME, "in_range.nii.gz")
    assert foreign_range(image, SCHEME) is None and not warnings.records
    np.testing.assert_array_equal(out, np.clip((image - 0.0) * (1.0 / 255.0), 0, 1))   # the old formula


@pytest.mark.parametrize("scale", [4000.0 / 255.0, 1.0 / 255.0])
def test_other_units_are_standardised_with_a_warning(scale: float, warnings: pytest.LogCaptureFixture) -> None:
    image = _brain() * scale
    out = normalize(image, SCHEME, "other_units.nii.gz")
    assert len(warnings.records) == 1 and "other_units.nii.gz" in warnings.records[0].getMessage()
    inside = image > 0
    assert float((out[inside] >= 0.999).mean()) < 0.02 and float(out[inside].mean()) > 0.2
    assert np.abs(out - normalize(_brain(), SCHEME)).max() < 0.05
