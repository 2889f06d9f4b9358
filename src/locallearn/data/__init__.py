"""Datasets: specs (classes, channels, size, normalisation), official-format loaders, the user's own image
folders, augmentation, download/check.

    spec = describe_dataset("cifar10", root)                          # or "imagefolder", image_size=...
    images, labels = load_split("cifar10", root, train=True)          # uint8 (N, C, S, S), int64 (N,)
    loader = BatchLoader(images, labels, spec=spec, batch_size=1024, train=True, seed=0)
    loader.set_epoch(epoch); for x, y in loader: ...                  # normalised float32, augmented
"""

from locallearn.data.augment import crop_flip, random_crop_params
from locallearn.data.errors import CorruptFileError, DatasetError
from locallearn.data.fetch import CheckReport, FileStatus, check, download, safe_extract
from locallearn.data.loader import BatchLoader
from locallearn.data.sources import SOURCES, describe_dataset, load_split
from locallearn.data.specs import DATASETS, DatasetSpec, dataset_names, get_spec

DEFAULT_ROOT = "data"  # where `locallearn data ...` and training look for files unless told otherwise

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "SOURCES",
    "BatchLoader",
    "CheckReport",
    "CorruptFileError",
    "DatasetError",
    "DatasetSpec",
    "FileStatus",
    "check",
    "crop_flip",
    "dataset_names",
    "describe_dataset",
    "download",
    "get_spec",
    "load_split",
    "random_crop_params",
    "safe_extract",
]
