"""Contrast-agnostic training. Contrast augmentation: a new random contrast per image (curve, bias, gamma, blur,
noise) that keeps the geometry and the background, depends on the seed only, sometimes inverts tissue order, is
applied by the pair dataset when asked, and is switched on by ``nnreg_train --contrast-augmentation``. The MIND-SSC
training loss: ``nnreg_train --similarity mind``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnreg.training.data import augmentation
from nnreg.training.data.augmentation import ContrastRandomizer

SHAPE = (16, 20, 12)


def _image() -> np.ndarray:
    """Two tissues (0.4 and 0.8) in a zero background."""
    image = np.zeros(SHAPE, np.float32)
    image[3:-3, 3:-3, 3:-3] = 0.4
    image[6:-6, 6:-6, 5:-5] = 0.8
    return image


def test_background_range_and_seed() -> None:
    image = _image()
    randomizer = ContrastRandomizer(probability=1.0)
    out = randomizer(image, 7)
    assert out.dtype == np.float32 and out.shape == SHAPE
    assert np.all(out[image == 0] == 0) and out.min() >= 0 and out.max() <= 1
    assert np.array_equal(out, randomizer(image, 7)) and not np.array_equal(out, randomizer(image, 8))
    assert not np.array_equal(out, image)


def test_the_probability_and_inverted_contrasts() -> None:
    image = _image()
    inner, outer = (slice(8, 10), slice(9, 11), slice(5, 7)), (slice(4, 5), slice(4, 5), slice(4, 5))
    half = ContrastRandomizer()
    unchanged = sum(np.array_equal(half(image, s), image) for s in range(200))
    assert 60 < unchanged < 140                                          # P_CONTRAST = 0.5
    always = ContrastRandomizer(probability=1.0)
    inverted = sum(float(always(image, s)[inner].mean()) < float(always(image, s)[outer].mean()) for s in range(60))
    assert 5 < inverted < 55                                             # both orders of the two tissues occur
    assert augmentation.P_CONTRAST == 0.5


def test_pair_dataset_applies_it(tiny_preprocessed: dict[str, Path]) -> None:
    from tests.training.conftest import plain_and_augmented

    plain, contrast, _ = plain_and_augmented(tiny_preprocessed, contrast=True)
    differs = 0
    for index in range(8):
        a, b, p = contrast[index], contrast[index], plain[index]
        for key in ("fixed", "moving"):
            assert np.array_equal(a[key].numpy(), b[key].numpy())
            assert np.all(a[key].numpy()[p[key].numpy() == 0] == 0)          # the background stays background
            differs += not np.array_equal(a[key].numpy(), p[key].numpy())
    assert differs > 0


@pytest.mark.parametrize("flag, expected", [("--contrast-augmentation", True), ("--no-contrast-augmentation", False),
                                            (None, None)])
def test_the_cli_flag(flag: str | None, expected: bool | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnreg.training
    from nnreg.cli.train import main

    seen: dict = {}
    monkeypatch.setattr(nnreg.training, "run_training", lambda *a, **k: seen.update(k["overrides"]) or Path("x"))
    result = CliRunner().invoke(main, ["901", "0", *([flag] if flag else [])])
    assert result.exit_code == 0, result.output
    assert seen.get("contrast_augmentation") is expected


def test_the_similarity_option_reaches_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--similarity mind`` is a hyperparameter, and the deep-supervised loss then scores every level by MIND-SSC:
    an inverted-contrast copy of the fixed image is a near-perfect match for MIND, not for a plain intensity loss."""
    import torch

    import nnreg.training
    from nnreg.cli.train import main
    from nnreg.losses import DeepSupervisedRegistrationLoss
    from nnreg.training.hyperparameters import TrainingHyperparameters
    from nnreg.utilities.errors import ConfigurationError

    seen: dict = {}
    monkeypatch.setattr(nnreg.training, "run_training", lambda *a, **k: seen.update(k["overrides"]) or Path("x"))
    assert CliRunner().invoke(main, ["901", "0", "--similarity", "mind"]).exit_code == 0
    assert seen["similarity"] == "mind"
    assert CliRunner().invoke(main, ["901", "0", "--similarity", "mi"]).exit_code != 0
    with pytest.raises(ConfigurationError, match="similarity"):
        TrainingHyperparameters(similarity="ssd")
    from nnreg.cli.train import SIMILARITY_NAMES
    from nnreg.losses.similarity import SIMILARITIES

    assert SIMILARITY_NAMES == SIMILARITIES          # the CLI's copy (kept import-free for a fast --help)

    class Output:
        displacement = torch.zeros((1, 3, 12, 12, 12))
        levels = None

    fixed = torch.rand((1, 1, 12, 12, 12), generator=torch.Generator().manual_seed(0))
    inverted = 1.0 - fixed
    other = torch.rand((1, 1, 12, 12, 12), generator=torch.Generator().manual_seed(1))
    mind = DeepSupervisedRegistrationLoss(lambda_reg=0.0, similarity="mind")
    assert float(mind(inverted, fixed, Output())[0]) < 1e-6 < float(mind(other, fixed, Output())[0])
    with pytest.raises(ValueError, match="unknown similarity"):
        DeepSupervisedRegistrationLoss(similarity="mi")
