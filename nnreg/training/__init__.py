"""Training: the trainer (hooks), its hyperparameters, data pipeline, logging, checkpoints and DDP set-up.

``run_training(...)`` is the API behind ``nnreg_train``; ``find_trainer(name)`` resolves trainer classes.
"""
from nnreg.training.find_trainer import find_trainer
from nnreg.training.hyperparameters import TrainingHyperparameters
from nnreg.training.run import run_training
from nnreg.training.trainer import nnRegTrainer

__all__ = ["nnRegTrainer", "TrainingHyperparameters", "find_trainer", "run_training"]
