"""Training data: which pairs to draw (``pairs``), intensity augmentation (``augmentation``), reading the
preprocessed arrays (``dataset``) and the worker-process loader (``loader``)."""
from nnreg.training.data.dataset import PairDataset
from nnreg.training.data.loader import DataLoaderWorkerError, PairLoader, default_num_workers
from nnreg.training.data.pairs import PairSampler, ordered_pairs

__all__ = ["PairDataset", "PairLoader", "DataLoaderWorkerError", "default_num_workers", "PairSampler",
           "ordered_pairs"]
