"""Sharing trained models as zip files, as nnU-Net does (``nnreg_export_model_to_zip`` /
``nnreg_install_pretrained_model_from_zip``).

A model zip holds, below ``<DatasetName>/<Trainer>__<Plans>__<configuration>/`` (the layout of ``$nnReg_results``),
each chosen model folder's ``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` and ``debug.json`` /
``progress.png`` when present, and per chosen fold ``fold_<X>/<checkpoint>`` plus its ``validation/summary.json``.
At the zip's root, :data:`MANIFEST` lists every other member with its size and SHA-256, and the folds of each
configuration. Export also writes the SHA-256 of the whole zip beside it (``M.zip.sha256``, ``sha256sum`` format)
and logs it.

What installing checks, and what that gives:

- ``--sha256 HEX`` (optional, first): the zip's own SHA-256 must equal a checksum the user obtained apart from the
  zip (e.g. published by the model's author). Only this detects tampering.
- Before unpacking (:mod:`nnreg.model_zip_checks`): a zip, nnreg's manifest of the right shape, safe member paths,
  exactly the manifest's files with the sizes it declares, and room for the declared total.
- While unpacking into a temporary folder beside the target: each member stops at its declared size and must match
  its SHA-256 in the manifest. The manifest sits inside the zip, so this detects corruption, not tampering.
- Every checkpoint must load as tensors and plain data only (``weights_only``); one holding other Python objects is
  refused, as the predictor would refuse it, and nothing of it runs.

Only then is each model folder renamed into place, so ``$nnReg_results`` never holds half a model; everything
nnreg created is removed on failure. Raw data and existing models are never touched unless ``overwrite``, and a
model folder that ``overwrite`` replaces is kept whole under ``<dataset>/.nnreg_replaced/`` (never deleted).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Sequence

from nnreg.dataset.locate import resolve_dataset_name
from nnreg.inference.model_folder import (DEFAULT_CHECKPOINT, DEFAULT_PLANS, DEFAULT_TRAINER, model_folder_name,
                                          select_folds)
from nnreg.model_zip_checks import (FORMAT, FORMAT_VERSION, MANIFEST, ModelZipError, check_model_zip, check_room,
                                    is_sha256)
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.files import atomic_path, host_token, owner_token, process_alive
from nnreg.utilities.safe_load import UnreadableCheckpointError, UnsafeCheckpointError, load_tensors_only

logger = logging.getLogger(__name__)

MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json", "debug.json", "progress.png")
FOLD_FILES = ("validation/summary.json",)
_CHUNK = 1 << 20


def _digest(handle: IO[bytes]) -> str:
    """SHA-256 of what is left to read in an open binary file, read in chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return _digest(handle)


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_model_to_zip` wrote."""

    path: Path
    dataset_name: str
    models: list[str]
    folds: dict[str, list[str]]    # configuration -> folds
    files: int
    sha256: str                    # of the whole zip, also written to ``<zip>.sha256``


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
    chosen_folds: dict[str, list[str]] = {}
    for configuration in configurations:
        folder = results / name / model_folder_name(trainer, plans, configuration)
        if not folder.is_dir():
            raise ConfigurationError(f"no trained model {folder.name}", results / name)
        if not (folder / "plans.json").is_file():
            raise ConfigurationError("model folder lacks plans.json", folder)
        selected = select_folds(folder, list(folds) if folds else None, checkpoints[0])
        chosen_folds[configuration] = selected
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
        digest = _sha256(tmp)
    checksum_file = output.with_name(output.name + ".sha256")
    with atomic_path(checksum_file) as tmp:
        tmp.write_text(f"{digest}  {output.name}\n")     # the format of sha256sum: `sha256sum -c` checks it
    listed = "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in chosen_folds.items())
    logger.info("wrote %s: %s, %s, %d files", output, name, listed, len(members))
    logger.info("SHA-256 of %s: %s (written to %s; publish it apart from the zip)", output.name, digest,
                checksum_file.name)
    return ExportedModel(output, name, manifest["models"], chosen_folds, len(members), digest)


def parse_sha256(text: str) -> str:
    """A SHA-256 given by the user (64 hex digits, any case; a ``sha256sum`` line is accepted too)."""
    value = text.strip().split()[0].lower() if text.strip() else ""
    if not is_sha256(value):
        raise ConfigurationError(f"--sha256 expects the zip's SHA-256 as 64 hex digits, not {text!r}")
    return value


def _create_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (so a failure can remove just those)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _unpack_member(archive: zipfile.ZipFile, name: str, expected: dict[str, Any], target: Path,
                   zip_path: Path) -> None:
    """Stream one member to ``target``, stopping as soon as it exceeds its declared size; check its SHA-256."""
    size, digest, written = expected["size"], hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.open(name) as source, target.open("xb") as sink:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                written += len(chunk)
                if written > size:
                    raise ModelZipError(f"member {name} unpacks to more than the {size} bytes it declares (a "
                                        f"decompression bomb?)", zip_path)
                digest.update(chunk)
                sink.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelZipError(f"corrupt member {name} ({exc})", zip_path) from None
    if written != size:
        raise ModelZipError(f"corrupt member {name} ({written} bytes, the manifest declares {size})", zip_path)
    if digest.hexdigest() != expected["sha256"]:
        raise ModelZipError(f"checksum mismatch for {name}: it differs from the zip's own manifest, so the zip is "
                            f"corrupt (the manifest cannot reveal tampering: verify the zip with --sha256)", zip_path)


def _check_checkpoint(path: Path, name: str, zip_path: Path) -> None:
    """A checkpoint must load as tensors and plain data only, as the predictor will load it."""
    try:
        load_tensors_only(path)
    except UnsafeCheckpointError as exc:
        raise ModelZipError(f"{name}: refused: the checkpoint holds a Python object ({exc.obj}) besides tensors and "
                            f"plain data, and unpickling it could run code; nothing was installed", zip_path) from None
    except UnreadableCheckpointError as exc:
        raise ModelZipError(f"{name}: cannot read checkpoint ({exc.reason})", zip_path) from None


def _keep_replaced(staging: Path, models: list[str], dataset_folder: Path) -> None:
    """``--overwrite`` moved each replaced model folder into ``staging`` as ``.replaced-<model>``: keep it, whole
    (it may hold the user's own folds, logs and notes), under ``<dataset>/.nnreg_replaced/<model>-<time>``, and say
    where; nnreg deletes only what it created."""
    for model in models:
        if (staging / f".replaced-{model}").exists():
            _keep_folder(staging / f".replaced-{model}", model, dataset_folder)


def _keep_folder(folder: Path, model: str, dataset_folder: Path) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    keep, suffix = dataset_folder / REPLACED_FOLDER / f"{model}-{stamp}", 1
    while keep.exists():
        keep, suffix = dataset_folder / REPLACED_FOLDER / f"{model}-{stamp}-{suffix}", suffix + 1
    keep.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(keep)
    logger.warning("the replaced %s was kept, whole, as %s (delete it when you no longer need it)", model, keep)


def _move_into_place(staging: Path, models: list[str], targets: list[Path]) -> None:
    """Rename each unpacked model folder onto its target; a replaced folder goes into ``staging`` (deleted after).

    All or nothing: when a rename fails, the models already moved go back into ``staging`` and every replaced
    folder back to its place, so a failed ``--overwrite`` never loses the user's installed models."""
    done: list[tuple[Path, Path, Path | None]] = []     # (unpacked folder, target, the target's old folder)
    try:
        for model, target in zip(models, targets):
            replaced = staging / f".replaced-{model}"
            had = target.exists()
            if had:
                target.rename(replaced)
            done.append((staging / model, target, replaced if had else None))
            (staging / model).rename(target)
    except OSError as exc:
        for source, target, replaced in reversed(done):
            if target.exists() and not source.exists():
                target.rename(source)
            if replaced is not None and replaced.exists():
                replaced.rename(target)
        failed = done[-1][1] if done else staging
        raise ModelZipError(f"could not move the model into place ({exc}); the models installed before are as they "
                            f"were", failed) from None


def install_model_from_zip(zip_path: str | Path, results: Path, overwrite: bool = False,
                           sha256: str | None = None) -> list[Path]:
    """Verify and unpack a model zip into ``results``; returns the installed model folders.

    ``sha256``: the zip's checksum as obtained apart from it; checked before anything else is read."""
    zip_path = Path(zip_path).expanduser()
    expected = parse_sha256(sha256) if sha256 is not None else None
    if not zip_path.is_file():
        raise ModelZipError("model zip not found", zip_path)
    with zip_path.open("rb") as handle:   # one handle: what was hashed is what is unpacked
        if expected is not None:
            actual = _digest(handle)
            if actual != expected:
                raise ModelZipError(f"SHA-256 of the zip is {actual}, not the {expected} given with --sha256: this "
                                    f"is not the file that checksum belongs to (modified, corrupt or another "
                                    f"version); nothing was installed", zip_path)
            handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ModelZipError(f"not a zip file or corrupt ({exc})", zip_path) from None
        with archive:
            targets = _install(archive, zip_path, results, overwrite)
    if expected is None:
        logger.warning("%s was checked against its own manifest only, which reveals corruption, not tampering; to "
                       "know it is the published file, install with --sha256 and the checksum its author published",
                       zip_path.name)
    return targets


STAGING_PREFIX = ".nnreg-install-"
REPLACED_FOLDER = ".nnreg_replaced"   # under <results>/<dataset>: model folders an --overwrite replaced, kept whole
_STAGING = re.compile(rf"^{re.escape(STAGING_PREFIX)}([0-9a-f]{{8}})-(\d+)-[a-z0-9_]+$")


def _remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders of installs killed on this host (``.nnreg-install-<host>-<pid>-<random>`` of a
    dead pid): nnreg's own, by their exact name; anything else, and a live install's, stays."""
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        match = _STAGING.match(path.name)
        if match and path.is_dir() and match.group(1) == host_token() and not process_alive(int(match.group(2))):
            for replaced in path.glob(".replaced-*"):    # a model the killed install had moved aside: kept
                _keep_folder(replaced, replaced.name[len(".replaced-"):], folder)
            logger.info("removing %s, left by an interrupted install", path)
            shutil.rmtree(path, ignore_errors=True)


def _install(archive: zipfile.ZipFile, zip_path: Path, results: Path, overwrite: bool) -> list[Path]:
    manifest = check_model_zip(archive, zip_path)
    dataset = manifest["dataset_name"]
    models = sorted({name.split("/")[1] for name in manifest["files"]})
    targets = [results / dataset / model for model in models]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigurationError("a model of this name is already installed (pass --overwrite to replace it)",
                                 existing[0])
    check_room(manifest, results / dataset, zip_path)
    created = _create_folders(results / dataset)
    _remove_stale_staging(results / dataset)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{owner_token()}-", dir=results / dataset))
    try:
        for name, entry in manifest["files"].items():
            target = staging.joinpath(*PurePosixPath(name).parts[1:])
            _unpack_member(archive, name, entry, target, zip_path)
            if target.suffix == ".pth":
                _check_checkpoint(target, name, zip_path)
        _move_into_place(staging, models, targets)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):     # only the folders this install made, and only when empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    try:
        _keep_replaced(staging, models, results / dataset)
    except OSError as exc:            # the replaced models stay where they are, named in the warning
        logger.warning("the replaced model folder(s) stay in %s (%s)", staging, exc)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("installed %s from %s into %s", ", ".join(models), zip_path, results / dataset)
    return targets
