"""Where one training run reads and writes: the preprocessed inputs, the fold's split, the results folder.

Results: ``<nnReg_results>/<Dataset>/<Trainer>__<Plans>__<configuration>/`` with copies of ``plans.json``,
``dataset.json`` and ``dataset_fingerprint.json`` (the folder alone suffices for inference) and ``fold_<X>/``.
Fold ``all`` trains on every image and validates on a few of them (not held out; the log says so).

The model folder's ``plans.json`` is what its other folds were trained with: a training start never replaces it
with different plans (e.g. after ``nnreg_plan_and_preprocess --overwrite-plans`` under the same plans name) while
another fold has checkpoints; it stops with one line naming those folds and how to proceed.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnreg.planning.plans import Plans
from nnreg.utilities.errors import ConfigurationError
from nnreg.utilities.files import TMP_MARKER, atomic_path, read_json, remove_stale_temporaries
from nnreg.utilities.run_lock import claim_run_lock

FOLD_ALL_VALIDATION_IMAGES = 4


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    return f"{trainer}__{plans}__{configuration}"


def _comparable(config: Any) -> dict[str, Any]:
    """A configuration entry without its free-form ``notes`` (what training and inference depend on)."""
    entry = dict(config.to_json())
    entry.pop("notes", None)
    return entry


@dataclass
class TrainingWorkspace:
    """Inputs and outputs of training ``fold`` of ``configuration`` of one dataset."""

    dataset_name: str
    preprocessed_dataset: Path        # <nnReg_preprocessed>/<Dataset>
    results_dataset: Path             # <nnReg_results>/<Dataset>
    plans: Plans
    configuration: str
    fold: str
    trainer_name: str
    train_cases: list[str]
    val_cases: list[str]

    @classmethod
    def create(cls, dataset_name: str, preprocessed_dataset: Path, results_dataset: Path, plans_name: str,
               configuration: str, fold: str, trainer_name: str) -> "TrainingWorkspace":
        """Check that planning and preprocessing happened and read the fold's split; one-line errors otherwise."""
        hint = f"run nnreg_plan_and_preprocess -d {dataset_name} first"
        plans_path = preprocessed_dataset / f"{plans_name}.json"
        if not plans_path.is_file():
            raise ConfigurationError(f"no plans {plans_name}.json for {dataset_name} ({hint})", preprocessed_dataset)
        plans = Plans.load(plans_path)
        config = plans.configuration(configuration)
        data_folder = preprocessed_dataset / config.data_identifier
        if not data_folder.is_dir() or not any(data_folder.glob("*.json")):
            raise ConfigurationError(f"configuration {configuration} is not preprocessed ({hint} -c {configuration})",
                                     data_folder)
        splits = read_json(preprocessed_dataset / "splits_final.json")
        all_cases = sorted({c for s in splits for part in ("train", "val") for c in s[part]})
        if fold == "all":
            train = all_cases
            val = all_cases[:FOLD_ALL_VALIDATION_IMAGES]
        elif fold.isdigit() and int(fold) < len(splits):
            train, val = sorted(splits[int(fold)]["train"]), sorted(splits[int(fold)]["val"])
        else:
            raise ConfigurationError(f"unknown fold {fold!r}: use 0-{len(splits) - 1} or all")
        missing = [c for c in train + val if not (data_folder / f"{c}.json").is_file()]
        if missing:
            raise ConfigurationError(f"case {missing[0]} of the split is not preprocessed ({hint})", data_folder)
        if len(train) < 2:
            raise ConfigurationError(f"fold {fold} has {len(train)} training image(s); pairs need at least 2")
        workspace = cls(dataset_name, preprocessed_dataset, results_dataset, plans, configuration, fold,
                        trainer_name, train, val)
        workspace.check_model_folder_plans()
        return workspace

    @property
    def data_folder(self) -> Path:
        return self.preprocessed_dataset / self.plans.configuration(self.configuration).data_identifier

    @property
    def model_folder(self) -> Path:
        return self.results_dataset / model_folder_name(self.trainer_name, self.plans.plans_name, self.configuration)

    @property
    def fold_folder(self) -> Path:
        return self.model_folder / f"fold_{self.fold}"

    def other_trained_folds(self) -> list[str]:
        """Folds of the model folder other than this one that have a checkpoint, numeric first."""
        folds = []
        for sub in self.model_folder.glob("fold_*") if self.model_folder.is_dir() else []:
            name = sub.name[len("fold_"):]
            finished = [p for p in sub.glob("checkpoint_*.pth") if TMP_MARKER not in p.name] if sub.is_dir() else []
            if name != self.fold and finished:
                folds.append(name)
        return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))

    def check_model_folder_plans(self) -> None:
        """One-line error if the model folder's plans.json differs (for this configuration) from the plans being
        trained with while other folds were trained with it: replacing it would orphan those folds."""
        existing = self.model_folder / "plans.json"
        if not existing.is_file():
            return
        new = _comparable(self.plans.configuration(self.configuration))
        try:
            old = _comparable(Plans.load(existing).configuration(self.configuration))
        except ConfigurationError:
            old = None
        if old == new:
            return
        folds = self.other_trained_folds()
        if not folds:
            return
        keys = sorted(k for k in new if old is None or old.get(k) != new[k])
        named = ", ".join(folds)
        moved = " ".join(f"fold_{f}" for f in folds)
        raise ConfigurationError(
            f"fold(s) {named} of this model folder were trained with other {self.plans.plans_name} plans for "
            f"{self.configuration} than {self.plans.plans_name}.json now holds (re-planned? differing: "
            f"{', '.join(keys) or 'unreadable plans.json'}); training fold {self.fold} would replace the plans they "
            f"need. Plan under a new name and train with it (nnreg_plan_and_preprocess -d {self.dataset_name} -p "
            f"NEWNAME, then nnreg_train {self.dataset_name} {self.fold} -p NEWNAME), or move {moved} out of this "
            f"folder to retrain every fold with the new plans", existing)

    def prepare_output(self) -> None:
        """Create the fold folder and copy plans, dataset.json and fingerprint into the model folder (the plans
        only where :meth:`check_model_folder_plans` allows)."""
        self.check_model_folder_plans()
        self.fold_folder.mkdir(parents=True, exist_ok=True)
        claim_run_lock(self.fold_folder, f"fold {self.fold} of {self.model_folder.name}")   # one run per fold
        for folder in (self.fold_folder, self.model_folder):      # checkpoints half-written by a killed run
            remove_stale_temporaries(folder)
        copies = {"plans.json": self.preprocessed_dataset / f"{self.plans.plans_name}.json",
                  "dataset.json": self.preprocessed_dataset / "dataset.json",
                  "dataset_fingerprint.json": self.preprocessed_dataset / "dataset_fingerprint.json"}
        for name, source in copies.items():
            if source.is_file():
                with atomic_path(self.model_folder / name) as tmp:
                    shutil.copyfile(source, tmp)

    def describe_split(self) -> str:
        if self.fold == "all":
            return (f"fold all: training on all {len(self.train_cases)} images; validating on {len(self.val_cases)} "
                    f"of them ({', '.join(self.val_cases)}), which are NOT held out")
        return (f"fold {self.fold}: {len(self.train_cases)} training images, {len(self.val_cases)} held-out "
                f"validation images ({', '.join(self.val_cases)})")

    def final_validation_cases(self) -> tuple[list[str], str]:
        if self.fold == "all":
            return self.val_cases, "training images (fold all has no held-out images)"
        return self.val_cases, f"the held-out images of fold {self.fold}"

    def init_args(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        return {"dataset_name": self.dataset_name, "plans_name": self.plans.plans_name,
                "configuration": self.configuration, "fold": self.fold, "hyperparameters": hyperparameters}
