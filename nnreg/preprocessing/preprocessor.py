"""Preprocess images onto a configuration's network grid (training data here, inference pairs in the predictor).

Per image: normalise intensities (scheme from the plans), resample to the target spacing and cut the
network box in one interpolation (:class:`GridMapping`), and keep everything needed to map a field back
to the original grid in the case's JSON metadata (original geometry + grid mapping).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from nnreg.dataset.image_io import Geometry, read_image
from nnreg.dataset.learn2reg import Learn2RegDataset
from nnreg.planning.plans import ConfigurationPlan
from nnreg.preprocessing.grid import GridMapping
from nnreg.preprocessing.normalization import normalize
from nnreg.preprocessing.storage import is_case_done, save_case
from nnreg.utilities.errors import DatasetError
from nnreg.utilities.files import remove_stale_temporaries
from nnreg.utilities.parallel import map_with_progress

logger = logging.getLogger(__name__)


def configuration_signature(config: ConfigurationPlan) -> str:
    """Hash of every setting that changes the preprocessed arrays (a change forces re-preprocessing)."""
    keys = {"spacing": config.spacing, "resampled_shape": config.resampled_shape,
            "crop_start": config.crop_start, "shape": config.shape, "normalization": config.normalization}
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def grid_mapping_for(geometry: Geometry, config: ConfigurationPlan) -> GridMapping:
    """The grid mapping of one image: its own spacing decides the factor; the box is centred if its
    resampled shape differs from the planned one (images must be pre-aligned, as Learn2Reg requires)."""
    factor = tuple(float(t) / float(s) for t, s in zip(config.spacing, geometry.spacing))
    resampled = [max(1, round(n / f)) for n, f in zip(geometry.shape, factor)]
    start = tuple(int(c + (r - pr) // 2) for c, r, pr in zip(config.crop_start, resampled, config.resampled_shape))
    return GridMapping(tuple(geometry.shape), factor, start, tuple(config.shape))


def preprocess_image(array: np.ndarray, geometry: Geometry, config: ConfigurationPlan,
                     source: str | Path = "") -> tuple[np.ndarray, GridMapping]:
    """Normalise and resample one image onto the network grid; returns (float32 array, mapping)."""
    if not np.isfinite(array).all():
        raise DatasetError("image contains NaN or infinite values", source)
    mapping = grid_mapping_for(geometry, config)
    return mapping.to_network(normalize(array, config.normalization), order=1), mapping


def preprocess_labels(labels: np.ndarray, mapping: GridMapping) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto the network grid (for validation metrics only)."""
    return mapping.to_network(labels.astype(np.int16), order=0)


@dataclass(frozen=True)
class _CaseJob:
    case_id: str
    image: str
    labels: str | None


def _run_case(job: _CaseJob, config: ConfigurationPlan, out_folder: str, signature: str) -> str:
    array, geometry = read_image(job.image)
    image, mapping = preprocess_image(array, geometry, config, job.image)
    seg = None
    if job.labels is not None:
        labels, label_geometry = read_image(job.labels, dtype=np.int32)
        if label_geometry.shape != geometry.shape:
            raise DatasetError(f"label map shape {list(label_geometry.shape)} differs from its image's "
                               f"{list(geometry.shape)}", job.labels)
        seg = preprocess_labels(labels, mapping)
    meta = {"case_id": job.case_id, "source": job.image, "labels_source": job.labels, "signature": signature,
            "original_geometry": geometry.to_json(), "grid_mapping": mapping.to_json()}
    save_case(Path(out_folder), job.case_id, image, seg, meta)
    return job.case_id


def preprocess_dataset(dataset: Learn2RegDataset, config: ConfigurationPlan, out_folder: Path,
                       num_processes: int = 2, clean: bool = False) -> list[str]:
    """Preprocess every training image (and its labels, if any) into ``out_folder``; returns the case ids.

    Finished cases (metadata present with the current signature) are skipped unless ``clean``; leftovers of
    an interrupted run (temporary files, cases without metadata or with an old signature) are redone.
    """
    out_folder.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out_folder)
    if stale:
        logger.info("removed %d unfinished file(s) left by an interrupted run in %s", stale, out_folder)
    signature = configuration_signature(config)
    jobs = []
    for entry in dataset.training:
        if not clean and is_case_done(out_folder, entry.case_id, signature):
            continue
        labels = entry.labels_path()
        jobs.append(_CaseJob(entry.case_id, str(entry.path), str(labels) if labels.is_file() else None))
    if not jobs:
        logger.info("%s: all %d cases already preprocessed", out_folder.name, len(dataset.training))
    else:
        map_with_progress(partial(_run_case, config=config, out_folder=str(out_folder), signature=signature),
                          jobs, num_processes, desc=f"preprocess {out_folder.name}",
                          label=lambda job: f"case {job.case_id} ({job.image})")
    return [e.case_id for e in dataset.training]
