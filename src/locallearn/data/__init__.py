"""Datasets: specs (classes, size, normalisation), official-format loaders, augmentation."""

from locallearn.data.specs import DATASETS, DatasetSpec, get_spec

__all__ = ["DATASETS", "DatasetSpec", "get_spec"]
