"""The synthetic-contrast generator: the tissue ordering of each contrast, geometry untouched, the acquisition
effects, reproducibility by seed, and one-line errors; on a real aseg when ../shared is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnreg.example.contrast import Acquisition, apply_acquisition, synthetic_contrast, tissue_anchors

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "OpenBrains80"


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """Three tissue slabs with T1 ordering CSF < GM < WM, a little texture, and a zero background."""
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 10, 8), np.int32)
    labels[2:5, 2:-2, 2:-2], labels[5:8, 2:-2, 2:-2], labels[8:10, 2:-2, 2:-2] = 4, 3, 2   # csf, gm, wm
    means = {0: 0.0, 4: 40.0, 3: 110.0, 2: 160.0}
    image = np.vectorize(means.get)(labels).astype(np.float32)
    image += np.where(labels > 0, rng.normal(0, 3, labels.shape), 0).astype(np.float32)
    return image, labels


def _medians(image: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(np.median(image[labels == v])) for v in (4, 3, 2))   # type: ignore[return-value]


def test_each_contrast_orders_the_tissues_as_it_should() -> None:
    image, labels = _phantom()
    before = image.copy()
    csf, gm, wm = _medians(synthetic_contrast(image, labels, "t2"), labels)
    assert csf > gm > wm
    csf, gm, wm = _medians(synthetic_contrast(image, labels, "flair"), labels)
    assert gm > wm > csf
    assert np.array_equal(image, before)                                  # the input is not modified
    for contrast in ("t2", "flair", "random"):
        out = synthetic_contrast(image, labels, contrast)
        assert np.all(out[image == 0] == 0) and np.all(out[labels > 0] > 0)   # background stays 0, brain does not


def test_random_contrasts_are_reproducible_by_seed() -> None:
    image, labels = _phantom()
    a = synthetic_contrast(image, labels, "random", seed=3)
    assert np.array_equal(a, synthetic_contrast(image, labels, "random", seed=3))
    assert not np.array_equal(a, synthetic_contrast(image, labels, "random", seed=4))


def test_acquisition_effects() -> None:
    image, labels = _phantom()
    t2 = synthetic_contrast(image, labels, "t2")
    rng = np.random.default_rng(1)
    scanner = apply_acquisition(t2, Acquisition(bias=0.3, gamma=1.4, noise=0.02, scale=4000.0), rng)
    brain = t2 > 0
    assert scanner.max() > 1000 and np.all(scanner[~brain] == 0)
    ratio = scanner[brain] / np.maximum(t2[brain], 1e-6)
    assert ratio.std() / ratio.mean() > 0.05                              # not a plain rescaling
    plain = apply_acquisition(t2, Acquisition(scale=4.0), rng)
    np.testing.assert_allclose(plain[brain] / t2[brain], plain[brain][0] / t2[brain][0], rtol=1e-5)


def test_errors_are_one_line() -> None:
    image, labels = _phantom()
    with pytest.raises(ValueError, match="unknown contrast 'pd'"):
        synthetic_contrast(image, labels, "pd")
    with pytest.raises(ValueError, match="no csf label"):
        tissue_anchors(image, np.where(labels == 4, 0, labels))
    with pytest.raises(ValueError, match="differ in shape"):
        tissue_anchors(image, labels[:-1])


@pytest.mark.shared_data
def test_a_real_aseg_gives_a_t2_like_image() -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    from nnreg.dataset.image_io import read_image

    image, _ = read_image(SHARED / "imagesTr" / "OBR_0000_0000.nii.gz")
    labels, _ = read_image(SHARED / "labelsTr" / "OBR_0000_0000.nii.gz", dtype=np.int32)
    t2 = synthetic_contrast(image, labels, "t2")
    ventricles, cortex, white = (np.median(t2[np.isin(labels, v)]) for v in ((4, 43), (3, 42), (2, 41)))
    assert ventricles > cortex > white
