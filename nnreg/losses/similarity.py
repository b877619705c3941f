"""The image similarity losses nnreg optimises, by the names plans, hyperparameters and options use: ``"lncc"``
(local normalised cross-correlation, :mod:`nnreg.losses.ncc`, for images of one contrast) and ``"mind"`` (MIND-SSC,
:mod:`nnreg.losses.mind`, for any pair of contrasts)."""
from __future__ import annotations

SIMILARITIES: tuple[str, ...] = ("lncc", "mind")
