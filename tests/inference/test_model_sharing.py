"""Model zips: a round trip predicts the same fields; corrupt, foreign, unsafe and tampered zips are refused."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnreg.cli.export_model import main as export_main
from nnreg.cli.install_model import main as install_main
from nnreg.inference import nnRegPredictor
from nnreg.model_sharing import MANIFEST
from nnreg.networks import default_architecture
from tests.inference.helpers import invoke_cli as _invoke, one_line_error as _one_line_error, planned_dataset, \
    write_model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sharing")
    root, plans = planned_dataset(base, n_train=5, n_val=2)
    results = base / "results"
    folder = write_model_folder(results, plans, "3d_fullres", folds=("0", "1", "2"),
                                architecture=default_architecture(2, base_channels=8),
                                preprocessed=base / "preprocessed" / plans.dataset_name)
    archive = base / "model.zip"
    result = _invoke(export_main, "-d", "901", "-c", "3d_fullres", "-f", "0", "2", "-o", archive, "--results", results)
    assert result.exit_code == 0, result.stderr
    return {"root": root, "results": results, "folder": folder, "zip": archive}


def test_round_trip_predicts_the_same_fields(model: dict[str, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(model["zip"]) as archive:
        names = set(archive.namelist())
    prefix = f"Dataset901_Tiny/{model['folder'].name}"
    assert {f"{prefix}/plans.json", f"{prefix}/dataset.json", f"{prefix}/dataset_fingerprint.json",
            f"{prefix}/fold_0/checkpoint_final.pth", f"{prefix}/fold_2/checkpoint_final.pth", MANIFEST} <= names
    assert not any("fold_1" in n for n in names)
    installed = tmp_path / "results"
    result = _invoke(install_main, model["zip"], "--results", installed)
    assert result.exit_code == 0, result.stderr
    folder = installed / "Dataset901_Tiny" / model["folder"].name
    images = sorted((model["root"] / "imagesVal").glob("*.nii.gz"))
    fields = []
    for source in (model["folder"], folder):
        predictor = nnRegPredictor(num_threads=1).initialize_from_trained_model_folder(source, ["0", "2"])
        fields.append(predictor.predict_pair(images[0], images[1]))
    assert np.array_equal(fields[0], fields[1])
    _one_line_error(_invoke(install_main, model["zip"], "--results", installed), "already installed", "--overwrite")
    assert _invoke(install_main, model["zip"], "--results", installed, "--overwrite").exit_code == 0


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None],
             extra: dict[str, bytes] | None = None) -> Path:
    """Copy a zip, replacing (bytes) or dropping (None) members and adding ``extra`` ones."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change[info.filename] if info.filename in change else old.read(info.filename)
            if data is not None:
                new.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            new.writestr(name, data)
    return target


def test_bad_zips_are_refused_in_one_line(model: dict[str, Path], tmp_path: Path) -> None:
    installed = tmp_path / "results"
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(model["zip"].read_bytes()[: model["zip"].stat().st_size // 2])
    _one_line_error(_invoke(install_main, truncated, "--results", installed), "truncated.zip", "corrupt")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("model/weights.pth", b"123")
    _one_line_error(_invoke(install_main, foreign, "--results", installed), "not an nnreg model zip")
    with zipfile.ZipFile(model["zip"]) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        checkpoint = next(n for n in archive.namelist() if n.endswith("checkpoint_final.pth"))
    tampered = _rewrite(model["zip"], tmp_path / "tampered.zip", {checkpoint: b"not the weights"})
    _one_line_error(_invoke(install_main, tampered, "--results", installed), "checksum mismatch", checkpoint)
    unsafe_manifest = dict(manifest, files={**manifest["files"], "../evil.txt": {"size": 1, "sha256": "0"}})
    unsafe = _rewrite(model["zip"], tmp_path / "unsafe.zip", {MANIFEST: json.dumps(unsafe_manifest).encode()},
                      {"../evil.txt": b"x"})
    _one_line_error(_invoke(install_main, unsafe, "--results", installed), "unsafe")
    extra = _rewrite(model["zip"], tmp_path / "extra.zip", {}, {f"{manifest['dataset_name']}/x/run.sh": b"rm -rf"})
    _one_line_error(_invoke(install_main, extra, "--results", installed), "not in the manifest")
    missing = _rewrite(model["zip"], tmp_path / "missing.zip", {checkpoint: None})
    _one_line_error(_invoke(install_main, missing, "--results", installed), "missing")
    assert not (tmp_path / "evil.txt").exists()
    assert not installed.exists() or not any(p.name.endswith(".pth") for p in installed.rglob("*"))


def test_export_errors(model: dict[str, Path], tmp_path: Path) -> None:
    _one_line_error(_invoke(export_main, "-d", "901", "-f", "4", "-o", tmp_path / "m.zip", "--results",
                            model["results"]), "fold 4")
    _one_line_error(_invoke(export_main, "-d", "901", "-c", "3d_halfres", "-o", tmp_path / "m.zip", "--results",
                            model["results"]), "no trained model")
    _one_line_error(_invoke(export_main, "-d", "901", "-o", tmp_path / "m.tar", "--results", model["results"]),
                    ".zip")
    assert not (tmp_path / "m.zip").exists()
