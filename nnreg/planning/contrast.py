"""The planner's contrast-augmentation rule: on when the dataset names more than one modality, else off.

Why: a model that will be asked to register contrasts it never trains on — LUMIR 2025's multi-modal validation
pairs, T1w fixed ``_0000`` against T2w moving ``_0001``, while every training image is a T1w ``_0000`` — should see
random new contrasts while training (``nnreg.training.data.augmentation.ContrastRandomizer``); a dataset of one
contrast keeps its own intensity statistics, so the augmentation stays off there. The evidence is what the
dataset.json names: the distinct LUMIR modality suffixes (``_000M``, characters ``[-11:-7]`` of the path, as the
official evaluator reads them) of its training images and validation pairs, and the entries of its ``"modality"``
field (LUMIR 2025's dataset.json, as published with its evaluation code, declares only
``{"0": "T1w Brain MRI"}``, so the file names are what reveal it).
``nnreg_plan_and_preprocess --contrast-augmentation / --no-contrast-augmentation`` overrides the rule.
"""
from __future__ import annotations

from dataclasses import dataclass

from nnreg.dataset.learn2reg import Learn2RegDataset


@dataclass(frozen=True)
class DatasetModalities:
    """What the rule looks at: the modalities a dataset.json names."""

    declared: tuple[str, ...]   # the values of dataset.json's "modality" field
    suffixes: tuple[str, ...]   # the distinct _000M suffixes of the training images and validation pairs' images

    @classmethod
    def of(cls, dataset: Learn2RegDataset) -> "DatasetModalities":
        images = [*dataset.training, *(image for pair in dataset.validation for image in (pair.fixed, pair.moving))]
        return cls(declared=tuple(dataset.modalities[k] for k in sorted(dataset.modalities)),
                   suffixes=tuple(sorted({image.modality for image in images})))


def choose_contrast_augmentation(forced: bool | None, modalities: DatasetModalities | None) -> tuple[bool, str]:
    """``(on, why)``: ``forced`` when given, else on when the dataset names more than one modality (module
    docstring); off when the planner was not told the dataset's modalities (``modalities`` None)."""
    if forced is not None:
        return forced, f"chosen with --{'' if forced else 'no-'}contrast-augmentation"
    if modalities is None:
        return False, "the planner was not given the dataset's modalities"
    if len(modalities.suffixes) > 1:
        suffixes = ", ".join(modalities.suffixes)
        return True, f"dataset.json's images carry {len(modalities.suffixes)} modality suffixes ({suffixes})"
    if len(modalities.declared) > 1:
        return True, f"dataset.json declares {len(modalities.declared)} modalities ({', '.join(modalities.declared)})"
    return False, f"one modality in dataset.json (suffix {modalities.suffixes[0] if modalities.suffixes else '-'})"
