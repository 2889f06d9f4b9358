"""What a dataset is, independent of where its files are: classes, image size, normalisation and the
paper's augmentation (METHODS.md 7). `ll.build(dataset=...)` and the CLI read everything from here."""

from __future__ import annotations

from dataclasses import dataclass

from locallearn.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_size: int  # square images, S×S
    mean: tuple[float, float, float]  # of the un-normalised [0, 1] image, per channel
    std: tuple[float, float, float]
    pad: int  # random-crop padding of the training augmentation
    pad_mode: str  # "reflect" or "zeros"
    flip: bool  # random horizontal flip in training


DATASETS: Registry[DatasetSpec] = Registry("dataset")

_CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
_CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
_HALF = (0.5, 0.5, 0.5)

for _spec in (
    DatasetSpec("cifar10", 10, 32, _CIFAR_MEAN, _CIFAR_STD, pad=4, pad_mode="reflect", flip=True),
    DatasetSpec("cifar100", 100, 32, _CIFAR_MEAN, _CIFAR_STD, pad=4, pad_mode="reflect", flip=True),
    DatasetSpec("svhn", 10, 32, _HALF, _HALF, pad=2, pad_mode="zeros", flip=False),
    DatasetSpec("stl10", 10, 96, _HALF, _HALF, pad=4, pad_mode="zeros", flip=True),
    # scikit-learn's handwritten digits, upsampled to 32×32 (see data/digits.py); no flip: digits are not
    # mirror-symmetric.
    DatasetSpec("digits", 10, 32, _HALF, _HALF, pad=2, pad_mode="zeros", flip=False),
):
    DATASETS.register(_spec.name, _spec)


def get_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)
