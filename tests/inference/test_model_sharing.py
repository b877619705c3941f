"""Model zips: a round trip predicts the same fields; corrupt, foreign, unsafe and tampered zips are refused."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nnreg.cli.export_model import main as export_main
from nnreg.cli.install_model import main as install_main
from nnreg.inference import nnRegPredictor
from nnreg.model_sharing import MANIFEST
from nnreg.networks import default_architecture
from tests.inference.test_checkpoint_safety import hostile_checkpoint
from tests.inference.helpers import invoke_cli as _invoke, one_line_error as _one_line_error, planned_dataset, \
    write_model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("sharing")
    root, plans = planned_dataset(base, n_train=5, n_val=2)
    results = base / "results"
    folder = write_model_folder(results, plans, "3d_fullres", folds=("0", "1", "2"),
                                architecture=default_architecture(2, base_channels=8),
                                preprocessed=base / "preprocessed" / plans.dataset_name)
    archive = base / "model.zip"
    result = _invoke(export_main, "-d", "901", "-c", "3d_fullres", "-f", "0", "2", "-o", archive, "--results", results)
    assert result.exit_code == 0, result.stderr
    return {"root": root, "results": results, "folder": folder, "zip": archive, "plans": plans}


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
    (folder / "NOTES.txt").write_text("mine")            # the user's own file in the installed model's folder
    assert _invoke(install_main, model["zip"], "--results", installed, "--overwrite").exit_code == 0
    assert not (folder / "NOTES.txt").exists()           # the folder is the zip's again ...
    kept = list((installed / "Dataset901_Tiny" / ".nnreg_replaced").glob(f"{model['folder'].name}-*"))
    assert len(kept) == 1 and (kept[0] / "NOTES.txt").read_text() == "mine"   # ... and the old one kept whole


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
    corrupt = _members(model["zip"])[checkpoint][::-1]     # same size, other bytes
    tampered = _rewrite(model["zip"], tmp_path / "tampered.zip", {checkpoint: corrupt})
    _one_line_error(_invoke(install_main, tampered, "--results", installed), "checksum mismatch", checkpoint)
    unsafe_manifest = dict(manifest, files={**manifest["files"], "../evil.txt": {"size": 1, "sha256": "0" * 64}})
    unsafe = _rewrite(model["zip"], tmp_path / "u.zip", {MANIFEST: json.dumps(unsafe_manifest).encode()},
                      {"../evil.txt": b"x"})
    _one_line_error(_invoke(install_main, unsafe, "--results", installed), "unsafe", "../evil.txt")
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


# -- integrity: the zip's own checksum, printed on export, verified on install with --sha256 ---------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_export_prints_and_writes_the_zip_checksum(model: dict[str, Any], tmp_path: Path) -> None:
    """The manifest inside a zip only proves the zip agrees with itself; the zip's own SHA-256 is what a user can
    check against a copy published apart from it."""
    archive = tmp_path / "shared.zip"
    result = _invoke(export_main, "-d", "901", "-f", "0", "-o", archive, "--results", model["results"])
    assert result.exit_code == 0, result.stderr
    digest = _sha256(archive.read_bytes())
    assert digest in result.output
    assert (tmp_path / "shared.zip.sha256").read_text() == f"{digest}  shared.zip\n"   # sha256sum -c format
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.zip", "shared.zip.sha256"]


def test_install_checks_the_zip_against_a_given_sha256(model: dict[str, Any], tmp_path: Path) -> None:
    installed = tmp_path / "results"
    digest = _sha256(model["zip"].read_bytes())
    wrong = _sha256(b"another file")
    _one_line_error(_invoke(install_main, model["zip"], "--results", installed, "--sha256", wrong),
                    "model.zip", "SHA-256", wrong, digest)
    _one_line_error(_invoke(install_main, model["zip"], "--results", installed, "--sha256", "abc"), "64 hex")
    assert not installed.exists()
    result = _invoke(install_main, model["zip"], "--results", installed, "--sha256", digest.upper())
    assert result.exit_code == 0, result.stderr
    assert (installed / "Dataset901_Tiny" / model["folder"].name / "fold_0" / "checkpoint_final.pth").is_file()


def test_manifest_lists_the_folds_of_each_configuration(model: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(model["results"], results)
    write_model_folder(results, model["plans"], "3d_halfres", folds=("1",),
                       architecture=default_architecture(2, base_channels=8))
    archive = tmp_path / "two.zip"
    result = _invoke(export_main, "-d", "901", "-c", "3d_fullres", "3d_halfres", "-o", archive, "--results", results)
    assert result.exit_code == 0, result.stderr
    with zipfile.ZipFile(archive) as opened:
        manifest = json.loads(opened.read(MANIFEST))
    assert manifest["folds"] == {"3d_fullres": ["0", "1", "2"], "3d_halfres": ["1"]}


def test_a_failed_overwrite_of_two_models_restores_both(model: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--overwrite`` of a two-model zip whose second rename fails: both installed models are as they were."""
    results = tmp_path / "results"
    shutil.copytree(model["results"], results)
    write_model_folder(results, model["plans"], "3d_halfres", folds=("1",),
                       architecture=default_architecture(2, base_channels=8))
    archive = tmp_path / "two.zip"
    assert _invoke(export_main, "-d", "901", "-c", "3d_fullres", "3d_halfres", "-o", archive,
                   "--results", results).exit_code == 0
    installed = sorted((results / "Dataset901_Tiny").glob("*__*"))
    assert len(installed) == 2
    for folder in installed:
        (folder / "mine.txt").write_text(folder.name)        # the user's copies, told apart from the zip's
    original_rename = Path.rename
    moved = []

    def failing_rename(self: Path, target: Path) -> Path:
        if self.name == installed[1].name and Path(target) == installed[1]:   # the second model's move into place
            raise OSError("disk gone")
        moved.append(self)
        return original_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    result = _invoke(install_main, archive, "--results", results, "--overwrite")
    monkeypatch.setattr(Path, "rename", original_rename)
    _one_line_error(result, "disk gone", "as they were")
    assert moved
    for folder in installed:
        assert (folder / "mine.txt").read_text() == folder.name
    assert not list((results / "Dataset901_Tiny").glob(".nnreg-install-*"))


# -- hostile zips: each refused in one line before anything lands in the results folder --------------------------

def _members(source: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(source) as archive:
        return {n: archive.read(n) for n in archive.namelist() if n != MANIFEST}


def _zip_with_manifest(target: Path, files: dict[str, bytes], entries: dict[str, Any] | None = None,
                       folders: tuple[str, ...] = ()) -> Path:
    """A zip of ``files`` (and folder entries) with a manifest that matches them, except for ``entries``."""
    listed = {name: {"size": len(data), "sha256": _sha256(data)} for name, data in files.items()}
    listed.update(entries or {})
    manifest = {"format": "nnreg-model", "format_version": 1, "dataset_name": "Dataset901_Tiny",
                "models": sorted({n.split("/")[1] for n in files}), "folds": {}, "files": listed}
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest))
        for folder in folders:
            info = zipfile.ZipInfo(folder)
            info.external_attr = (0o40755 << 16) | 0x10    # as zip -r writes folders
            archive.writestr(info, b"")
        for name, data in files.items():
            archive.writestr(name, data)
    return target


def _patch_declared_sizes(path: Path, sizes: dict[str, int]) -> None:
    """Overwrite the uncompressed size the zip's central directory declares for some members (what a crafted
    archive can claim)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        offset = archive.start_dir
    while data[offset:offset + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[offset + 28:offset + 34])
        name = bytes(data[offset + 46:offset + 46 + name_length]).decode()
        if name in sizes:
            data[offset + 24:offset + 28] = struct.pack("<I", sizes[name])
        offset += 46 + name_length + extra_length + comment_length
    path.write_bytes(bytes(data))


def _nothing_installed(installed: Path) -> None:
    assert not installed.exists() or not any(installed.rglob("*")), sorted(installed.rglob("*"))


def test_a_checkpoint_holding_code_is_refused_at_install(model: dict[str, Any], tmp_path: Path) -> None:
    """The manifest is rewritten to match, as anyone editing the zip would: only the checkpoint check stops it."""
    marker = tmp_path / "ran"
    files = _members(model["zip"])
    checkpoint = next(n for n in files if n.endswith("fold_2/checkpoint_final.pth"))
    hostile_checkpoint(tmp_path / "hostile.pth", marker)
    files[checkpoint] = (tmp_path / "hostile.pth").read_bytes()
    archive = _zip_with_manifest(tmp_path / "payload.zip", files)
    installed = tmp_path / "results"
    _one_line_error(_invoke(install_main, archive, "--results", installed), checkpoint, "refused")
    assert not marker.exists()
    _nothing_installed(installed)
    # a failed install removes only what it created: a folder that was there stays, with the user's files
    (installed / "Dataset901_Tiny").mkdir(parents=True)
    (installed / "Dataset901_Tiny" / "notes.txt").write_text("mine")
    _one_line_error(_invoke(install_main, archive, "--results", installed), checkpoint, "refused")
    assert sorted(p.name for p in installed.rglob("*")) == ["Dataset901_Tiny", "notes.txt"]


def test_an_interrupted_installs_staging_folder_is_removed_by_the_next(model: dict[str, Any], tmp_path: Path) -> None:
    """A killed install leaves ``.nnreg-install-<host>-<pid>-<random>``: the next install removes it when that pid
    is dead on this host, and leaves a live install's folder and a user's look-alike alone."""
    import os
    import subprocess

    from nnreg.utilities.files import host_token

    child = subprocess.Popen(["true"])                    # a finished child: its pid no longer runs
    child.wait()
    dataset = tmp_path / "results" / "Dataset901_Tiny"
    stale = dataset / f".nnreg-install-{host_token()}-{child.pid}-ab12cd_x"
    live = dataset / f".nnreg-install-{host_token()}-{os.getpid()}-zz99yy00"
    mine = dataset / ".nnreg-install-notes"
    for folder in (stale, live, mine):
        folder.mkdir(parents=True)
        (folder / "file.txt").write_text("x")
    result = _invoke(install_main, model["zip"], "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.is_dir() and mine.is_dir()


def test_declared_sizes_are_checked_before_unpacking(model: dict[str, Any], tmp_path: Path) -> None:
    files = _members(model["zip"])
    name = next(n for n in files if n.endswith("plans.json"))
    installed = tmp_path / "results"
    # the manifest claims fewer bytes than the member holds (its checksum is right: today it installs)
    small = _zip_with_manifest(tmp_path / "small.zip", files,
                               {name: {"size": 10, "sha256": _sha256(files[name])}})
    _one_line_error(_invoke(install_main, small, "--results", installed), name, "10 bytes")
    # the zip's directory claims fewer bytes than the member unpacks to (a bomb's trick)
    bomb = _zip_with_manifest(tmp_path / "bomb.zip", {**files, name: b"\0" * 3_000_000},
                              {name: {"size": 1000, "sha256": _sha256(b"\0" * 3_000_000)}})
    _patch_declared_sizes(bomb, {name: 1000})
    _one_line_error(_invoke(install_main, bomb, "--results", installed), name, "corrupt")
    _nothing_installed(installed)


def test_unpacking_stops_at_the_declared_size(tmp_path: Path) -> None:
    """Python's zipfile already cuts a member at the size the zip declares; nnreg counts the bytes itself too, so a
    reader that yields more (another zip library, a crafted stream) stops after at most one chunk past it."""
    from nnreg.model_sharing import ModelZipError, _unpack_member

    class Endless(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            Endless.reads += 1
            buffer[:] = b"\0" * len(buffer)
            return len(buffer)

    class Archive:
        def open(self, name: str) -> io.BufferedReader:
            return io.BufferedReader(Endless())

    with pytest.raises(ModelZipError, match="more than the 10 bytes"):
        _unpack_member(Archive(), "D/M/x.bin", {"size": 10, "sha256": "0" * 64}, tmp_path / "x.bin",  # type: ignore
                       tmp_path / "m.zip")
    assert (tmp_path / "x.bin").stat().st_size <= 10 and Endless.reads <= 2


def test_a_huge_declared_total_is_refused_before_unpacking(model: dict[str, Any], tmp_path: Path) -> None:
    """300 members declaring 4 GB each (1.3 TB) in a zip of a few kB: refused before one byte is written."""
    files = {f"Dataset901_Tiny/{model['folder'].name}/fold_0/part_{k}.bin": b"x" for k in range(300)}
    declared = 0xFFFFFFF0
    archive = _zip_with_manifest(tmp_path / "huge.zip", files,
                                 {n: {"size": declared, "sha256": _sha256(b"x")} for n in files})
    _patch_declared_sizes(archive, {n: declared for n in files})
    installed = tmp_path / "results"
    _one_line_error(_invoke(install_main, archive, "--results", installed), "huge.zip", "unpacks to")
    _nothing_installed(installed)


def test_unsafe_paths_are_refused(model: dict[str, Any], tmp_path: Path) -> None:
    """Traversal, absolute paths and links (already refused before this change; kept under test)."""
    prefix = f"Dataset901_Tiny/{model['folder'].name}"
    installed = tmp_path / "results"
    for k, name in enumerate((f"{prefix}/../../../evil.txt", "/tmp/evil.txt", f"{prefix}/fold_0/../../x.txt")):
        listed = _zip_with_manifest(tmp_path / f"a{k}.zip", {**_members(model["zip"]), name: b"x"})
        _one_line_error(_invoke(install_main, listed, "--results", installed), "unsafe", name)
        unlisted = _zip_with_manifest(tmp_path / f"b{k}.zip", _members(model["zip"]))
        with zipfile.ZipFile(unlisted, "a") as archive:
            archive.writestr(name, b"x")
        _one_line_error(_invoke(install_main, unlisted, "--results", installed), "unsafe", name)
    link = _zip_with_manifest(tmp_path / "l.zip", _members(model["zip"]))
    with zipfile.ZipFile(link, "a") as archive:
        info = zipfile.ZipInfo(f"{prefix}/fold_0/link")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    _one_line_error(_invoke(install_main, link, "--results", installed), "unsafe", "link")
    folder = _zip_with_manifest(tmp_path / "f.zip", _members(model["zip"]), folders=("Dataset901_Tiny/../x/",))
    _one_line_error(_invoke(install_main, folder, "--results", installed), "unsafe", "../x/")
    _nothing_installed(installed)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x.txt").exists()


def test_a_zip_repacked_with_folder_entries_installs(model: dict[str, Any], tmp_path: Path) -> None:
    """``unzip M.zip; zip -r M2.zip ...`` adds an entry per folder: those are fine when their paths are safe."""
    files = _members(model["zip"])
    folders = sorted({"/".join(n.split("/")[:k]) + "/" for n in files for k in range(1, n.count("/") + 1)})
    archive = _zip_with_manifest(tmp_path / "repacked.zip", files, folders=tuple(folders))
    installed = tmp_path / "results"
    result = _invoke(install_main, archive, "--results", installed)
    assert result.exit_code == 0, result.stderr
    assert (installed / "Dataset901_Tiny" / model["folder"].name / "fold_2" / "checkpoint_final.pth").is_file()


@pytest.mark.skipif(shutil.which("zip") is None or shutil.which("unzip") is None, reason="needs zip and unzip")
def test_a_zip_repacked_by_the_zip_tool_installs(model: dict[str, Any], tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"
    subprocess.run(["unzip", "-q", str(model["zip"]), "-d", str(unpacked)], check=True)
    subprocess.run(["zip", "-qr", str(tmp_path / "repacked.zip"), MANIFEST, "Dataset901_Tiny"], cwd=unpacked,
                   check=True)
    result = _invoke(install_main, tmp_path / "repacked.zip", "--results", tmp_path / "results")
    assert result.exit_code == 0, result.stderr


def test_a_member_that_is_both_file_and_folder_is_refused(model: dict[str, Any], tmp_path: Path) -> None:
    files = _members(model["zip"])
    checkpoint = next(n for n in files if n.endswith("checkpoint_final.pth"))
    archive = _zip_with_manifest(tmp_path / "clash.zip", {**files, f"{checkpoint}/inner.json": b"{}"})
    installed = tmp_path / "results"
    _one_line_error(_invoke(install_main, archive, "--results", installed), checkpoint, "both a file and a folder")
    twice = _zip_with_manifest(tmp_path / "twice.zip", files)
    with zipfile.ZipFile(twice, "a") as opened, pytest.warns(UserWarning, match="Duplicate name"):
        opened.writestr(checkpoint, b"other weights")
    _one_line_error(_invoke(install_main, twice, "--results", installed), checkpoint, "twice")
    _nothing_installed(installed)


@pytest.mark.parametrize("entry", ["abc", None, [1, 2], {"size": "12", "sha256": "0" * 64}, {"size": 12},
                                   {"size": True, "sha256": "0" * 64}, {"size": 12, "sha256": "xyz"}])
def test_a_malformed_manifest_entry_is_refused(model: dict[str, Any], tmp_path: Path, entry: Any) -> None:
    files = _members(model["zip"])
    name = next(n for n in files if n.endswith("plans.json"))
    archive = _zip_with_manifest(tmp_path / "malformed.zip", files, {name: entry})
    installed = tmp_path / "results"
    _one_line_error(_invoke(install_main, archive, "--results", installed), MANIFEST, name)
    _nothing_installed(installed)


def test_other_compression_methods_and_a_second_manifest_are_refused(model: dict[str, Any], tmp_path: Path) -> None:
    """bzip2/lzma members decompress unbounded chunks (nnreg and zip write deflate); two manifests are ambiguous."""
    files = _members(model["zip"])
    archive = _zip_with_manifest(tmp_path / "bz.zip", files)
    name = f"Dataset901_Tiny/{model['folder'].name}/notes.txt"
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(tmp_path / "bzip2.zip", "w") as new:
        manifest = json.loads(old.read(MANIFEST))
        manifest["files"][name] = {"size": 3, "sha256": _sha256(b"abc")}
        new.writestr(MANIFEST, json.dumps(manifest))
        for member in files:
            new.writestr(member, old.read(member))
        new.writestr(name, b"abc", compress_type=zipfile.ZIP_BZIP2)
    installed = tmp_path / "results"
    _one_line_error(_invoke(install_main, tmp_path / "bzip2.zip", "--results", installed), name, "compression")
    with zipfile.ZipFile(archive, "a") as opened, pytest.warns(UserWarning, match="Duplicate name"):
        opened.writestr(MANIFEST, json.dumps({"format": "nnreg-model"}))
    _one_line_error(_invoke(install_main, archive, "--results", installed), MANIFEST, "more than once")
    _nothing_installed(installed)
