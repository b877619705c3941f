"""Training losses: local NCC similarity, the gradient regulariser and deep-supervision weighting."""
from nnreg.losses.deep_supervision import DeepSupervisedRegistrationLoss, LevelLoss, level_weights
from nnreg.losses.inverse_consistency import inverse_consistency_loss, inverse_consistency_residuals
from nnreg.losses.ncc import local_ncc, local_ncc_loss
from nnreg.losses.regularization import gradient_l2

__all__ = [
    "local_ncc",
    "local_ncc_loss",
    "gradient_l2",
    "level_weights",
    "LevelLoss",
    "DeepSupervisedRegistrationLoss",
    "inverse_consistency_loss",
    "inverse_consistency_residuals",
]
