"""One preprocessed case on disk: ``<case>.b2nd`` (float32 image), ``<case>_seg.b2nd`` (int16 labels, optional),
``<case>.json`` (metadata). Arrays are blosc2 NDArrays (compressed, memory-mappable, as nnU-Net uses),
array-axis order (i, j, k) on the configuration's network grid.

The JSON is written last and atomically, so it marks a finished case: a case whose JSON is missing, or
whose ``signature`` differs from the current configuration's, is redone by the next run.

blosc2 is imported by the two functions that use it (0.3 s of every command's start-up otherwise, ``nnreg_register``
and ``nnreg_predict`` included, which never read preprocessed arrays).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnreg.utilities.errors import NnregError
from nnreg.utilities.files import atomic_path, read_json, write_json


def _blocks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(s, 32) for s in shape)


def write_array(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a blosc2 NDArray atomically."""
    import blosc2

    array = np.ascontiguousarray(array)
    with atomic_path(path) as tmp:
        tmp.unlink()  # blosc2 refuses to overwrite with mode='w' on some versions only when told; start clean
        blosc2.asarray(array, urlpath=str(tmp), mode="w", cparams={"codec": blosc2.Codec.ZSTD, "clevel": 5},
                       chunks=array.shape, blocks=_blocks(array.shape))


def open_array(path: Path, mmap: bool = True) -> Any:
    """Open a blosc2 array memory-mapped (slicing it reads only what is needed); ``[...]`` gives numpy."""
    if not path.is_file():
        raise NnregError("preprocessed array missing (re-run nnreg_plan_and_preprocess)", path)
    import blosc2

    return blosc2.open(str(path), mode="r", mmap_mode="r" if mmap else None)


def case_paths(folder: Path, case_id: str) -> dict[str, Path]:
    return {"image": folder / f"{case_id}.b2nd", "seg": folder / f"{case_id}_seg.b2nd",
            "meta": folder / f"{case_id}.json"}


def save_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray | None, meta: dict[str, Any]) -> None:
    """Write a case's arrays, then its metadata (the completion marker)."""
    paths = case_paths(folder, case_id)
    write_array(image.astype(np.float32, copy=False), paths["image"])
    if seg is not None:
        write_array(seg.astype(np.int16, copy=False), paths["seg"])
    write_json({**meta, "has_seg": seg is not None}, paths["meta"])


def is_case_done(folder: Path, case_id: str, signature: str) -> bool:
    """True if the case's metadata exists with this signature and its arrays are present."""
    paths = case_paths(folder, case_id)
    if not paths["meta"].is_file() or not paths["image"].is_file():
        return False
    try:
        meta = read_json(paths["meta"])
    except NnregError:
        return False
    if meta.get("signature") != signature:
        return False
    return not meta.get("has_seg") or paths["seg"].is_file()


def load_case(folder: Path, case_id: str, mmap: bool = True) -> tuple[Any, Any | None, dict[str, Any]]:
    """(image, seg or None, metadata) of a preprocessed case; arrays memory-mapped blosc2 NDArrays."""
    paths = case_paths(folder, case_id)
    meta = read_json(paths["meta"])
    seg = open_array(paths["seg"], mmap) if meta.get("has_seg") else None
    return open_array(paths["image"], mmap), seg, meta
