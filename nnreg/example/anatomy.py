"""Tissue labels and structures derived from nilearn's MNI152 2009a template (T1, GM and WM probability maps).

Everything here is on the template's own 2 mm grid, in array-axis order (i, j, k) = (x: left->right,
y: posterior->anterior, z: inferior->superior) of the RAS NIfTI that nilearn loads. Nothing is downloaded:
the template files ship inside the nilearn wheel.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

LABEL_NAMES = {
    1: "CSF", 2: "Left-GM", 3: "Right-GM", 4: "Left-WM", 5: "Right-WM",
    6: "Ventricles", 7: "Left-DeepGM", 8: "Right-DeepGM",
}


def load_template(resolution_mm: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1 in [0, 255], GM prob, WM prob, brain mask) of the MNI152 2009a template, cropped to the brain box."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution_mm).get_fdata().astype(np.float32)
    gm = datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata().astype(np.float32)
    wm = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata().astype(np.float32)
    mask = (t1 > 0.05 * t1.max()) & ((gm + wm) > 0.1)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    t1 = np.where(mask, t1, 0.0)
    t1 = t1 / np.percentile(t1[mask], 99.5) * 255.0
    return np.clip(t1, 0, 255).astype(np.float32), gm, wm, mask


def tissue_labels(gm: np.ndarray, wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Label map: CSF, left/right GM and WM, lateral ventricles, left/right deep GM (see LABEL_NAMES)."""
    labels = np.zeros(mask.shape, np.int16)
    csf = mask & (gm < 0.35) & (wm < 0.35)
    is_gm = mask & ~csf & (gm >= wm)
    is_wm = mask & ~csf & (wm > gm)
    left = np.zeros(mask.shape, bool)
    left[: mask.shape[0] // 2] = True
    labels[csf] = 1
    labels[is_gm & left], labels[is_gm & ~left] = 2, 3
    labels[is_wm & left], labels[is_wm & ~left] = 4, 5
    # ventricles: the largest CSF component deep inside the brain
    depth = ndimage.distance_transform_edt(mask)
    deep_csf, n = ndimage.label(csf & (depth > 8))
    if n:
        sizes = ndimage.sum(np.ones_like(deep_csf), deep_csf, index=range(1, n + 1))
        labels[deep_csf == 1 + int(np.argmax(sizes))] = 6
    # deep grey matter: GM far from the cortex (basal ganglia and thalamus)
    deep_gm = is_gm & (depth > 10)
    labels[deep_gm & left], labels[deep_gm & ~left] = 7, 8
    return labels


def landmark_points(labels: np.ndarray, mask: np.ndarray, n_random: int, seed: int) -> np.ndarray:
    """Template landmark positions (voxel coordinates): structure centroids plus random deep brain points."""
    points = [np.array(ndimage.center_of_mass(labels == lab)) for lab in (6, 7, 8) if (labels == lab).any()]
    depth = ndimage.distance_transform_edt(mask)
    candidates = np.argwhere(depth > 6)
    rng = np.random.default_rng(seed)
    points += [c.astype(float) for c in candidates[rng.choice(len(candidates), n_random, replace=False)]]
    return np.array(points)
