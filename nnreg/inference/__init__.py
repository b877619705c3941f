"""Inference: trained model folders -> displacement fields in the Learn2Reg format (plus ITK, warped images, QC).

``nnRegPredictor(...).initialize_from_trained_model_folder(folder)`` then ``predict_pair(fixed, moving)`` returns a
float32 ``(H, W, D, 3)`` voxel-unit pull field on the original fixed grid; :func:`predict_pairs` runs many pairs
with background reading and writing (the ``nnreg_predict`` command).
"""
from nnreg.inference.export import ExportOptions, pair_outputs
from nnreg.inference.pairs import PairSpec, collect_pairs
from nnreg.inference.pipeline import RunSummary, predict_pairs
from nnreg.inference.predictor import nnRegPredictor

__all__ = ["nnRegPredictor", "predict_pairs", "RunSummary", "ExportOptions", "pair_outputs", "PairSpec",
           "collect_pairs"]
