"""Sharing trained models as zip files, as nnU-Net does (``nnreg_export_model_to_zip`` /
``nnreg_install_pretrained_model_from_zip``).

A model zip holds, below ``<DatasetName>/<Trainer>__<Plans>__<configuration>/`` (the layout of ``$nnReg_results``),
each chosen model folder's ``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` and ``debug.json`` /
``progress.png`` when present, and per chosen fold ``fold_<X>/<checkpoint>`` plus its ``validation/summary.json``.
At the zip's root, :data:`MANIFEST` lists every other member with its size and SHA-256. Installing refuses, in one
line, a file that is not a zip or is corrupt, a zip without an nnreg manifest (foreign), members with unsafe paths
(absolute, ``..``, links, outside the dataset folder), members missing from or not listed in the manifest, and any
checksum mismatch; it unpacks into a temporary folder beside the target and renames each model folder into place, so
``$nnReg_results`` never holds half a model. Raw data and existing models are never touched unless ``overwrite``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from nnreg.dataset.locate import resolve_dataset_name
from nnreg.inference.model_folder import (DEFAULT_CHECKPOINT, DEFAULT_PLANS, DEFAULT_TRAINER, model_folder_name,
                                          select_folds)
from nnreg.utilities.errors import ConfigurationError, NnregError
from nnreg.utilities.files import atomic_path

logger = logging.getLogger(__name__)

MANIFEST = "nnreg_model_manifest.json"
FORMAT = "nnreg-model"
FORMAT_VERSION = 1
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json", "debug.json", "progress.png")
FOLD_FILES = ("validation/summary.json",)
_CHUNK = 1 << 20


class ModelZipError(NnregError):
    """A model zip is corrupt, foreign, unsafe or does not match its manifest."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_model_to_zip` wrote."""

    path: Path
    dataset_name: str
    models: list[str]
    folds: list[str]
    files: int


def export_model_to_zip(dataset: str, configurations: Sequence[str], output: str | Path, results: Path,
                        folds: Sequence[str] | None = None, trainer: str = DEFAULT_TRAINER,
                        plans: str = DEFAULT_PLANS, checkpoints: Sequence[str] = (DEFAULT_CHECKPOINT,)
                        ) -> ExportedModel:
    """Zip the model folders of ``dataset`` (id or name) for ``configurations`` with ``folds`` (None: every fold with
    the first checkpoint) and a checksum manifest, written atomically to ``output``."""
    output = Path(output).expanduser()
    if not output.name.endswith(".zip"):
        raise ConfigurationError("the model file must end with .zip", output)
    if not configurations:
        raise ConfigurationError("give at least one configuration (-c)")
    name = resolve_dataset_name(dataset, results)
    members: dict[str, Path] = {}
    chosen_folds: list[str] = []
    for configuration in configurations:
        folder = results / name / model_folder_name(trainer, plans, configuration)
        if not folder.is_dir():
            raise ConfigurationError(f"no trained model {folder.name}", results / name)
        if not (folder / "plans.json").is_file():
            raise ConfigurationError("model folder lacks plans.json", folder)
        selected = select_folds(folder, list(folds) if folds else None, checkpoints[0])
        chosen_folds = selected
        prefix = f"{name}/{folder.name}"
        for file_name in MODEL_FILES:
            if (folder / file_name).is_file():
                members[f"{prefix}/{file_name}"] = folder / file_name
        for fold in selected:
            for file_name in (*checkpoints, *FOLD_FILES):
                path = folder / f"fold_{fold}" / file_name
                if path.is_file():
                    members[f"{prefix}/fold_{fold}/{file_name}"] = path
                elif file_name in checkpoints:
                    raise ConfigurationError(f"fold {fold} has no {file_name}", folder)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset_name": name,
                "models": sorted({m.split("/")[1] for m in members}), "folds": chosen_folds,
                "files": {arcname: {"size": path.stat().st_size, "sha256": _sha256(path)}
                          for arcname, path in sorted(members.items())}}
    with atomic_path(output) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for arcname, path in sorted(members.items()):
                archive.write(path, arcname)
    logger.info("wrote %s: %s, %s, fold(s) %s, %d files", output, name, ", ".join(manifest["models"]),
                ", ".join(chosen_folds), len(members))
    return ExportedModel(output, name, manifest["models"], chosen_folds, len(members))


def _unsafe(name: str) -> bool:
    """An absolute or drive path, a backslash, or an empty, ``.`` or ``..`` component (a folder's trailing ``/`` is
    allowed)."""
    name = name[:-1] if name.endswith("/") else name
    if not name or name.startswith("/") or "\\" in name:
        return True
    parts = name.split("/")
    return ":" in parts[0] or any(part in ("", ".", "..") for part in parts)


def _read_manifest(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
    try:
        raw = archive.read(MANIFEST)
    except KeyError:
        raise ModelZipError(f"not an nnreg model zip (no {MANIFEST}; was it made by nnreg_export_model_to_zip?)",
                            zip_path) from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelZipError(f"{MANIFEST} is not valid JSON", zip_path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("dataset_name"), str):
        raise ModelZipError(f"not an nnreg model zip ({MANIFEST} has no nnreg model format)", zip_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelZipError(f"model zip format {manifest.get('format_version')} is not supported by this nnreg "
                            f"(expects {FORMAT_VERSION})", zip_path)
    return manifest


def check_model_zip(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
    """Validate names and manifest of an open zip (checksums are verified while unpacking); returns the manifest."""
    manifest = _read_manifest(archive, zip_path)
    dataset = manifest["dataset_name"]
    if _unsafe(dataset) or "/" in dataset:
        raise ModelZipError(f"unsafe dataset name {dataset!r} in the manifest", zip_path)
    infos = {info.filename: info for info in archive.infolist() if info.filename != MANIFEST}
    for name, info in infos.items():
        mode = info.external_attr >> 16
        if _unsafe(name) or not name.startswith(f"{dataset}/") or len(PurePosixPath(name).parts) < 3 or \
                stat.S_ISLNK(mode):
            raise ModelZipError(f"unsafe member path {name!r} (must be a plain file below {dataset}/<model>/)",
                                zip_path)
    for name in manifest["files"]:
        if _unsafe(name) or not name.startswith(f"{dataset}/"):
            raise ModelZipError(f"unsafe path {name!r} in the manifest", zip_path)
    files = {n for n, i in infos.items() if not i.is_dir()}
    missing, extra = sorted(set(manifest["files"]) - files), sorted(files - set(manifest["files"]))
    if missing:
        raise ModelZipError(f"{len(missing)} file(s) of the manifest are missing, e.g. {missing[0]}", zip_path)
    if extra:
        raise ModelZipError(f"{len(extra)} file(s) are not in the manifest, e.g. {extra[0]}", zip_path)
    return manifest


def install_model_from_zip(zip_path: str | Path, results: Path, overwrite: bool = False) -> list[Path]:
    """Verify and unpack a model zip into ``results``; returns the installed model folders."""
    zip_path = Path(zip_path).expanduser()
    if not zip_path.is_file():
        raise ModelZipError("model zip not found", zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelZipError(f"not a zip file or corrupt ({exc})", zip_path) from None
    with archive:
        manifest = check_model_zip(archive, zip_path)
        dataset = manifest["dataset_name"]
        models = sorted({name.split("/")[1] for name in manifest["files"]})
        targets = [results / dataset / model for model in models]
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise ConfigurationError("a model of this name is already installed (pass --overwrite to replace it)",
                                     existing[0])
        (results / dataset).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".nnreg-install-", dir=results / dataset))
        try:
            for name, expected in manifest["files"].items():
                target = staging.joinpath(*PurePosixPath(name).parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                try:
                    with archive.open(name) as source, target.open("wb") as sink:
                        for chunk in iter(lambda: source.read(_CHUNK), b""):
                            digest.update(chunk)
                            sink.write(chunk)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                    raise ModelZipError(f"corrupt member {name} ({exc})", zip_path) from None
                if digest.hexdigest() != expected.get("sha256"):
                    raise ModelZipError(f"checksum mismatch for {name} (the zip is corrupt or was modified)",
                                        zip_path)
            for model, target in zip(models, targets):
                if target.exists():
                    shutil.rmtree(target)
                (staging / model).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("installed %s from %s into %s", ", ".join(models), zip_path, results / dataset)
    return targets
