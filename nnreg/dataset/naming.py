"""File-naming rules of Learn2Reg/LUMIR.

Images are ``<PREFIX>_<4-digit id>_<4-digit modality>.nii.gz`` (``LUMIRMRI_3455_0000.nii.gz``,
``OBR_0009_0000.nii.gz``). The official evaluator takes the id from characters ``[-16:-12]`` and the
modality from ``[-11:-7]`` of the path, names displacement files ``disp_<fix>_<mov>.nii.gz`` (long form
``disp_<fix>_<fixmod>_<mov>_<movmod>.nii.gz`` when the modalities differ) and keys cases
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


def displacement_filename(fixed: str | Path, moving: str | Path) -> str:
    """``disp_<fix>_<mov>.nii.gz``, or the long form with modalities when they differ."""
    fix_id, fix_mod = challenge_id_and_modality(fixed)
    mov_id, mov_mod = challenge_id_and_modality(moving)
    if fix_mod == mov_mod:
        return f"disp_{fix_id}_{mov_id}.nii.gz"
    return f"disp_{fix_id}_{fix_mod}_{mov_id}_{mov_mod}.nii.gz"


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
