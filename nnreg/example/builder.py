"""Write the example as a Learn2Reg/LUMIR dataset folder (``DatasetXXX_Name/`` with dataset.json, images,
labels and landmarks), exactly the layout a user's own dataset has."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from nnreg.dataset.image_io import Geometry, write_image
from nnreg.example.anatomy import LABEL_NAMES, landmark_points, load_template, tissue_labels
from nnreg.example.subjects import make_subject

logger = logging.getLogger(__name__)

BOX = (80, 96, 80)          # 2 mm voxels: the template's brain (73 x 90 x 76) plus a margin
SPACING_MM = 2.0


def _crop_box(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    centre = (idx.min(0) + idx.max(0) + 1) // 2
    out = np.zeros(BOX, volume.dtype)
    src, dst = [], []
    for a in range(3):
        lo = int(centre[a]) - BOX[a] // 2
        s0, s1 = max(lo, 0), min(lo + BOX[a], volume.shape[a])
        src.append(slice(s0, s1))
        dst.append(slice(s0 - lo, s1 - lo))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def build_example_dataset(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0,
                          magnitude: float = 6.0) -> Path:
    """Create ``root`` (e.g. ``.../Dataset999_MNIExample``) and return it; existing files are replaced."""
    t1, gm, wm, mask = load_template(int(SPACING_MM))
    labels = tissue_labels(gm, wm, mask)
    t1, labels, mask = _crop_box(t1, mask), _crop_box(labels, mask), _crop_box(mask, mask)
    points = landmark_points(labels, mask, n_random=12, seed=seed)
    # RAS 2 mm grid stored the ITK way (LPS direction cosines)
    geometry = Geometry(BOX, (SPACING_MM,) * 3, (80.0, 112.0, -72.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    rng = np.random.default_rng(seed)
    training, val_images = [], []
    for i in range(n_train + n_val):
        split = "Tr" if i < n_train else "Val"
        name = f"MNIEX_{i:04d}_0000.nii.gz"
        subject = make_subject(t1, labels, points, rng, magnitude)
        write_image(subject.image, geometry, root / f"images{split}" / name)
        write_image(subject.labels, geometry, root / f"labels{split}" / name)
        if split == "Val":
            write_image(subject.landmarks, geometry, root / "landmarksVal" / name)
            val_images.append(f"./imagesVal/{name}")
        else:
            training.append({"image": f"./imagesTr/{name}"})
        logger.info("example subject %d/%d written", i + 1, n_train + n_val)
    pairs = [{"fixed": f, "moving": m} for f in val_images for m in val_images if f != m]
    meta = {
        "name": root.name,
        "description": "nnreg example: random smooth diffeomorphic deformations, bias fields, gamma changes and "
                       "noise applied to the MNI152 2009a symmetric template shipped by nilearn; labels from its "
                       "GM/WM probability maps; landmarks at known positions.",
        "labels_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "pairings": "unpaired", "provided_data": {"0": ["image"]}, "modality": {"0": "T1w"},
        "labels": {}, "tensorImageSize": {"0": "3D"}, "tensorImageShape": {"0": list(BOX)},
        "numTraining": n_train, "training": training, "numValidation": len(pairs), "validation": pairs,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
