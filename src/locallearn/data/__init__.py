"""Datasets: specs (classes, size, normalisation), official-format loaders, augmentation, download/check.

    images, labels = load_split("cifar10", root, train=True)          # uint8 (N, 3, 32, 32), int64 (N,)
    loader = BatchLoader(images, labels, spec=get_spec("cifar10"), batch_size=1024, train=True, seed=0)
    loader.set_epoch(epoch); for x, y in loader: ...                  # normalised float32, augmented
"""

from locallearn.data.augment import crop_flip, random_crop_params
from locallearn.data.errors import CorruptFileError, DatasetError
from locallearn.data.fetch import CheckReport, FileStatus, check, download, safe_extract
from locallearn.data.loader import BatchLoader
from locallearn.data.sources import SOURCES, load_split
from locallearn.data.specs import DATASETS, DatasetSpec, get_spec

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
    "download",
    "get_spec",
    "load_split",
    "random_crop_params",
    "safe_extract",
]
