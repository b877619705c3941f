"""Learn2Reg/LUMIR datasets: dataset.json, naming rules, locating a dataset, image I/O with geometry kept."""
from nnreg.dataset.learn2reg import ImageEntry, Learn2RegDataset, Pair, load_dataset
from nnreg.dataset.locate import find_raw_dataset, resolve_dataset_name

__all__ = ["ImageEntry", "Learn2RegDataset", "Pair", "load_dataset", "find_raw_dataset", "resolve_dataset_name"]
