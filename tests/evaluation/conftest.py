"""A tiny Learn2Reg-style ground truth (images, labels, landmarks) for the evaluation tests."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (12, 14, 10)
IDS = ("0001", "0002", "0003")


def write_volume(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))


def label_map(shift: int) -> np.ndarray:
    """Background 0, a slab of label 1, a cube of label 2 shifted by ``shift`` voxels along axis 0."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[2:10, 2:12, 1:4] = 1
    labels[3 + shift:7 + shift, 4:8, 5:9] = 2
    return labels


def landmark_map(shift: int) -> np.ndarray:
    """Two 7-voxel blobs (labels 1, 2); blob 1 moves by ``shift`` along axis 0."""
    lms = np.zeros(SHAPE, dtype=np.int16)
    for value, (i, j, k) in ((1, (4 + shift, 5, 5)), (2, (8, 9, 4))):
        lms[i, j, k] = value
        for axis in range(3):
            for step in (-1, 1):
                p = [i, j, k]
                p[axis] += step
                lms[tuple(p)] = value
    return lms


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    """Dataset with 3 validation images; image k is shifted by k-1 voxels; pairs (2<-1) and (3<-2)."""
    root = tmp_path / "Tiny"
    for n, ident in enumerate(IDS):
        name = f"TINY_{ident}_0000.nii.gz"
        image = np.where(label_map(n) > 0, 100.0, 0.0).astype(np.float32)
        write_volume(image, root / "imagesVal" / name)
        write_volume(label_map(n), root / "labelsVal" / name)
        write_volume(landmark_map(n), root / "landmarksVal" / name)
    pairs = [{"fixed": f"./imagesVal/TINY_{IDS[n + 1]}_0000.nii.gz",
              "moving": f"./imagesVal/TINY_{IDS[n]}_0000.nii.gz"} for n in range(2)]
    dataset = {"name": "Tiny", "training": [{"image": f"./imagesVal/TINY_{i}_0000.nii.gz"} for i in IDS],
               "validation": pairs, "tensorImageShape": {"0": list(SHAPE)}}
    (root / "dataset.json").write_text(json.dumps(dataset))
    config = {"name": "Tiny", "expected_shape": list(SHAPE) + [3], "eval_pairs": pairs,
              "evaluation_methods": [{"name": "Non-diffeomorphic Volumes", "metric": "ndv"},
                                     {"name": "DSC", "metric": "dice", "labels": [0, 1, 2, 7]},
                                     {"name": "HD95", "metric": "hd95", "labels": [0, 1, 2, 7]},
                                     {"name": "TRE_lm", "metric": "tre", "dest": "landmarks"}]}
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture()
def zero_fields(tmp_path: Path) -> Path:
    """Zero displacement files for the two tiny pairs."""
    from nnreg.dataset.image_io import write_displacement

    folder = tmp_path / "disp"
    for fix, mov in ((IDS[1], IDS[0]), (IDS[2], IDS[1])):
        write_displacement(np.zeros(SHAPE + (3,), np.float32), folder / f"disp_{fix}_{mov}.nii.gz")
    return folder
