"""File-naming rules of Learn2Reg/LUMIR.

Images are ``<PREFIX>_<4-digit id>_<4-digit modality>.nii.gz`` (``LUMIRMRI_3455_0000.nii.gz``,
``OBR_0009_0000.nii.gz``). The official evaluator takes the id from characters ``[-16:-12]`` and the
modality from ``[-11:-7]`` of the path, names displacement files ``disp_<fix>_<mov>.nii.gz`` when the modalities
are equal or are ``0000`` (fixed) and ``0001`` (moving) — LUMIR 2025's multi-modal pairs, whose evaluator looks
for that short name only — and ``disp_<fix>_<fixmod>_<mov>_<movmod>.nii.gz`` otherwise, and keys cases
``"<fix>_<fixmod><--<mov>_<movmod>"``. Ground truth lives at the image path with ``images`` replaced by
``labels`` (segmentations) or ``landmarks`` (landmark blobs); nnreg applies that replacement to the path
relative to the dataset root, so a root folder whose name contains "images" does not break it.
"""
from __future__ import annotations

import re
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii")
_ID_RE = re.compile(r"_(\d{4})_(\d{4})\.nii(\.gz)?$")


def strip_image_suffix(name: str) -> str:
    """``OBR_0009_0000.nii.gz`` -> ``OBR_0009_0000`` (the case identifier used for preprocessed files)."""
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def challenge_id_and_modality(path: str | Path) -> tuple[str, str]:
    """The 4-digit id and modality of an image, as the official evaluator reads them from a ``.nii.gz`` path.

    Falls back to the whole stem (modality ``0000``) for names that do not follow the rule.
    """
    name = Path(path).name
    match = _ID_RE.search(name)
    if match:
        return match.group(1), match.group(2)
    return strip_image_suffix(name), "0000"


def short_name_allowed(fix_mod: str, mov_mod: str) -> bool:
    """Whether the evaluator names the pair's field ``disp_<fix>_<mov>`` (module docstring)."""
    return fix_mod == mov_mod or (fix_mod == "0000" and mov_mod == "0001")


def displacement_stem(fixed: str | Path, moving: str | Path) -> str:
    """``disp_<fix>_<mov>``, or the long form with modalities where the evaluator expects it."""
    fix_id, fix_mod = challenge_id_and_modality(fixed)
    mov_id, mov_mod = challenge_id_and_modality(moving)
    if short_name_allowed(fix_mod, mov_mod):
        return f"disp_{fix_id}_{mov_id}"
    return f"disp_{fix_id}_{fix_mod}_{mov_id}_{mov_mod}"


def displacement_filename(fixed: str | Path, moving: str | Path) -> str:
    """The pair's challenge file name, :func:`displacement_stem` ``.nii.gz``."""
    return f"{displacement_stem(fixed, moving)}.nii.gz"


def case_key(fixed: str | Path, moving: str | Path) -> str:
    """The key of a pair in the official ``metrics.json``: ``"<fix>_<mod><--<mov>_<mod>"``."""
    fix_id, fix_mod = challenge_id_and_modality(fixed)
    mov_id, mov_mod = challenge_id_and_modality(moving)
    return f"{fix_id}_{fix_mod}<--{mov_id}_{mov_mod}"


def ground_truth_path(root: Path, relative_image_path: str, kind: str) -> Path:
    """Path of the ``kind`` (``labels`` or ``landmarks``) file of an image: ``images`` -> ``kind``."""
    if kind not in ("labels", "landmarks"):
        raise ValueError(f"unknown ground-truth kind {kind!r}")
    rel = relative_image_path[2:] if relative_image_path.startswith("./") else relative_image_path
    return root / rel.replace("images", kind)
