"""What ``nnreg_register`` and ``nnreg_predict`` import before they read an image: not blosc2 (preprocessed arrays),
scipy.ndimage, scipy.spatial or scikit-image (evaluation metrics): 0.6-0.9 s of every run's start-up on 2 cores,
for modules that registering a pair without a model never calls."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("blosc2", "scipy.ndimage", "scipy.spatial", "skimage", "acvl_utils")


def _imported(module: str) -> list[str]:
    """The :data:`HEAVY` modules that importing ``module`` in a fresh interpreter brings in."""
    code = (f"import sys\nimport {module}\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().split()


@pytest.mark.parametrize("module", ["nnreg.registration.run", "nnreg.inference.predictor", "nnreg.evaluation"])
def test_commands_do_not_import_what_they_do_not_call(module: str) -> None:
    assert _imported(module) == []


def test_the_functions_still_import_what_they_use(tmp_path) -> None:
    """The deferred imports happen where the functions run: a preprocessed array written and read, a mapping that
    resamples, the evaluation's label boxes, landmark centroids and surface distances."""
    import numpy as np

    from nnreg.evaluation.labels import encode
    from nnreg.evaluation.landmarks import tre
    from nnreg.evaluation.surface import hd95
    from nnreg.evaluation.warp import nearest_indices
    from nnreg.preprocessing.grid import GridMapping
    from nnreg.preprocessing.storage import open_array, write_array

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_array(array, tmp_path / "a.b2nd")
    assert np.array_equal(open_array(tmp_path / "a.b2nd")[...], array)
    mapping = GridMapping((8, 8, 8), (2.0, 2.0, 2.0), (0, 0, 0), (4, 4, 4))
    assert mapping.to_network(np.ones((8, 8, 8), np.float32), 1).shape == (4, 4, 4)
    labels = np.zeros((12, 12, 12), np.int16)
    labels[2:6, 3:7, 4:8] = 1
    shifted = np.roll(labels, 2, axis=0)
    assert [s.start for s in encode(labels, np.array([1.0])).boxes()[0]] == [2, 3, 4]
    assert tre(labels, shifted) == pytest.approx(2.0)
    assert hd95(labels, shifted, [1]) == pytest.approx(2.0)
    assert nearest_indices(np.zeros((12, 12, 12, 3)))[2, 3, 4] == 2 * 144 + 3 * 12 + 4
