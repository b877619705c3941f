"""Fine-tuning: pretrained weights are checked against the planned network, loaded, and reported."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nnreg.cli.train import main
from nnreg.networks import build_network, default_architecture
from nnreg.training.pretrained import load_pretrained_weights
from nnreg.utilities.errors import ConfigurationError
from tests.training.conftest import fold_folder

ARGS = ["--device", "cpu", "--iterations-per-epoch", "1", "--val-pairs", "1", "--num-workers", "0",
        "--ncc-window", "5", "--epochs", "1", "--no-final-validation"]


def _network(seed: int, **kwargs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(default_architecture(2, base_channels=4, **kwargs))


def test_weights_are_loaded_with_prefixes_stripped_and_reported(tmp_path: Path) -> None:
    source, target = _network(0), _network(1)
    path = tmp_path / "weights.pth"
    torch.save({"network_weights": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    report = load_pretrained_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert len(report.loaded) == len(source.state_dict()) and not report.ignored
    assert "encoder" in report.describe() and "loaded" in report.describe()
    torch.save(source.state_dict(), tmp_path / "bare.pth")                  # a bare state_dict works too
    assert load_pretrained_weights(_network(2), tmp_path / "bare.pth").parameters == report.parameters


def test_another_architecture_or_a_bad_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"network_weights": _network(0).state_dict()}, path)
    with pytest.raises(ConfigurationError, match="architecture does not fit: .* has shape"):
        load_pretrained_weights(build_network(default_architecture(2, base_channels=6)), path)
    with pytest.raises(ConfigurationError, match="architecture does not fit: .* is not in the file"):
        load_pretrained_weights(build_network(default_architecture(3, base_channels=4)), path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigurationError, match="cannot read pretrained weights"):
        load_pretrained_weights(_network(0), tmp_path / "junk.pth")
    with pytest.raises(ConfigurationError, match="not found"):
        load_pretrained_weights(_network(0), tmp_path / "missing.pth")


def test_fine_tuning_through_the_cli(train_env: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["901", "0", *ARGS])
    assert result.exit_code == 0, result.output
    weights = fold_folder(train_env) / "checkpoint_final.pth"
    # a vanishing learning rate: fold 1 ends (almost) where the pretrained weights started it
    result = CliRunner().invoke(main, ["901", "1", "-pretrained_weights", str(weights), *ARGS, "--lr", "1e-20"])
    assert result.exit_code == 0, result.output
    fold1 = fold_folder(train_env).parent / "fold_1"
    log = next(fold1.glob("training_log_*.txt")).read_text()
    assert f"pretrained weights {weights}: loaded" in log
    saved = torch.load(fold1 / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert saved["init_args"]["hyperparameters"]["pretrained_weights"] == str(weights.resolve())
    start = torch.load(weights, map_location="cpu", weights_only=True)["network_weights"]
    for key, value in start.items():
        assert torch.allclose(saved["network_weights"][key], value, atol=1e-6), key
    again = CliRunner().invoke(main, ["901", "1", "--c", "--pretrained-weights", str(weights), *ARGS])
    assert again.exit_code == 2 and "cannot be combined with --c" in again.output
    missing = CliRunner().invoke(main, ["901", "1", "-pretrained_weights", str(weights.parent / "nope.pth"), *ARGS])
    assert missing.exit_code == 2 and "nope.pth: pretrained weights file not found" in missing.output
