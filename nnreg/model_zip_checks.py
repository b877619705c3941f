"""What a model zip must satisfy before one byte of it is unpacked (:func:`check_model_zip`, :func:`check_room`).

These checks read only the zip's directory and its manifest, so a hostile zip is refused before it costs disk space:

- the manifest (:data:`MANIFEST`, at most :data:`MAX_MANIFEST_BYTES`) is nnreg's format and each entry is
  ``{"size": bytes, "sha256": 64 hex digits}`` — any other shape is one line, not a traceback;
- every member path is safe: relative, no ``..``/``.``/empty component, no backslash or drive, no link, below
  ``<dataset>/`` (files below ``<dataset>/<model>/``); folder entries (``x/``, as ``zip -r`` writes them) are allowed
  when their paths are safe and they hold no data;
- no name occurs twice (also ignoring case: a case-insensitive disk would merge them), no path is both a file and a
  folder;
- the members are exactly the manifest's files, each member's uncompressed size in the zip equals the manifest's,
  and only plain stored or deflated members (what nnreg and ``zip`` write; other methods can decompress unbounded
  chunks);
- the declared total fits :data:`MAX_MODEL_BYTES` and the free space of the target disk.

Unpacking then stops as soon as a member yields more bytes than declared and verifies each SHA-256. The manifest
sits inside the zip, so these checks detect corruption and malformed or hostile archives, **not** tampering: whoever
edits a zip can rewrite its manifest. Tampering is detected only by the zip's own SHA-256 checked against a copy
obtained apart from the zip (``--sha256``).
"""
from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from nnreg.utilities.errors import NnregError

MANIFEST = "nnreg_model_manifest.json"
FORMAT = "nnreg-model"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
MAX_MODEL_BYTES = 256 << 30     # far above any nnreg model (a fold's checkpoint is well below 1 GB)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ENCRYPTED = 0x1


class ModelZipError(NnregError):
    """A model zip is corrupt, foreign, unsafe or does not match its manifest."""


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a SHA-256 in lower-case hex."""
    return isinstance(text, str) and _HEX64.match(text) is not None


def unsafe_path(name: str) -> bool:
    """An absolute or drive path, a backslash, or an empty, ``.`` or ``..`` component (a folder's trailing ``/`` is
    allowed)."""
    name = name[:-1] if name.endswith("/") else name
    if not name or name.startswith("/") or "\\" in name:
        return True
    parts = name.split("/")
    return ":" in parts[0] or any(part in ("", ".", "..") for part in parts)


def _gigabytes(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def read_manifest(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
    """The manifest of an open zip, its shape checked; one-line :class:`ModelZipError` otherwise."""
    if sum(info.filename == MANIFEST for info in archive.infolist()) > 1:
        raise ModelZipError(f"{MANIFEST} appears more than once (ambiguous; nnreg never writes that)", zip_path)
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise ModelZipError(f"not an nnreg model zip (no {MANIFEST}; was it made by nnreg_export_model_to_zip?)",
                            zip_path) from None
    if info.file_size > MAX_MANIFEST_BYTES or info.compress_type not in _METHODS or info.flag_bits & _ENCRYPTED:
        raise ModelZipError(f"{MANIFEST} is not a manifest nnreg writes ({info.file_size} bytes)", zip_path)
    try:
        with archive.open(info) as source:
            raw = source.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(raw)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:   # JSON and Unicode errors are ValueErrors
        raise ModelZipError(f"{MANIFEST} is corrupt or not valid JSON ({type(exc).__name__})", zip_path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("dataset_name"), str):
        raise ModelZipError(f"not an nnreg model zip ({MANIFEST} has no nnreg model format)", zip_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelZipError(f"model zip format {manifest.get('format_version')} is not supported by this nnreg "
                            f"(expects {FORMAT_VERSION})", zip_path)
    for name, entry in manifest["files"].items():
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not is_sha256(entry.get("sha256")):
            raise ModelZipError(f"{MANIFEST}: malformed entry for {name!r} (expects {{\"size\": bytes, \"sha256\": "
                                f"64 hex digits}}, got {json.dumps(entry)[:80]})", zip_path)
    return manifest


def _check_member_paths(infos: list[zipfile.ZipInfo], dataset: str, zip_path: Path) -> dict[str, zipfile.ZipInfo]:
    """Safe, unique, unambiguous member paths; returns the file members by name."""
    files: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    seen: dict[str, str] = {}    # case-folded name -> name: a case-insensitive disk would merge them
    for info in infos:
        name = info.filename
        is_folder = name.endswith("/")
        folded = name.casefold()
        if folded in seen:
            twice = "twice" if seen[folded] == name else f"twice, as {seen[folded]!r} and {name!r}"
            raise ModelZipError(f"member {name} appears {twice} (ambiguous; nnreg never writes that)", zip_path)
        seen[folded] = name
        mode = info.external_attr >> 16
        if unsafe_path(name) or not (name + ("" if is_folder else "/")).startswith(f"{dataset}/") or \
                (not is_folder and len(PurePosixPath(name).parts) < 3) or stat.S_ISLNK(mode) or \
                (is_folder and info.file_size != 0):
            raise ModelZipError(f"unsafe member path {name!r} (must be a plain file below {dataset}/<model>/ or a "
                                f"folder entry)", zip_path)
        if is_folder:
            folders.add(name.rstrip("/"))
            continue
        if info.compress_type not in _METHODS or info.flag_bits & _ENCRYPTED:
            raise ModelZipError(f"member {name} is encrypted or uses compression method {info.compress_type} "
                                f"(nnreg reads plain stored and deflated members, as nnreg and zip write them)",
                                zip_path)
        files[name] = info
        parts = name.split("/")
        folders.update("/".join(parts[:k]) for k in range(1, len(parts)))
    folded_folders = {folder.casefold() for folder in folders}
    clash = sorted(name for name in files if name.casefold() in folded_folders)
    if clash:
        raise ModelZipError(f"member {clash[0]} is both a file and a folder", zip_path)
    return files


def check_model_zip(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
    """Validate the manifest, member paths and declared sizes of an open zip (checksums are verified while
    unpacking); returns the manifest."""
    manifest = read_manifest(archive, zip_path)
    dataset = manifest["dataset_name"]
    if unsafe_path(dataset) or "/" in dataset:
        raise ModelZipError(f"unsafe dataset name {dataset!r} in the manifest", zip_path)
    for name in manifest["files"]:
        if unsafe_path(name) or name.endswith("/") or not name.startswith(f"{dataset}/"):
            raise ModelZipError(f"unsafe path {name!r} in the manifest", zip_path)
    files = _check_member_paths([i for i in archive.infolist() if i.filename != MANIFEST], dataset, zip_path)
    missing, extra = sorted(set(manifest["files"]) - set(files)), sorted(set(files) - set(manifest["files"]))
    if missing:
        raise ModelZipError(f"{len(missing)} file(s) of the manifest are missing, e.g. {missing[0]}", zip_path)
    if extra:
        raise ModelZipError(f"{len(extra)} file(s) are not in the manifest, e.g. {extra[0]}", zip_path)
    for name, info in files.items():
        declared = manifest["files"][name]["size"]
        if info.file_size != declared:
            raise ModelZipError(f"member {name} holds {info.file_size} bytes in the zip but {declared} bytes in the "
                                f"manifest", zip_path)
    return manifest


def check_room(manifest: dict[str, Any], target: Path, zip_path: Path) -> int:
    """The declared total in bytes, once checked against :data:`MAX_MODEL_BYTES` and the free space at ``target``
    (or its nearest existing parent)."""
    total = sum(entry["size"] for entry in manifest["files"].values())
    if total > MAX_MODEL_BYTES:
        raise ModelZipError(f"the zip unpacks to {_gigabytes(total)}, more than any model holds (limit "
                            f"{_gigabytes(MAX_MODEL_BYTES)}): refused as a decompression bomb", zip_path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if total > free:
        raise ModelZipError(f"the zip unpacks to {_gigabytes(total)} but only {_gigabytes(free)} are free in "
                            f"{existing}", zip_path)
    return total
