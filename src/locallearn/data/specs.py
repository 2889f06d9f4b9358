"""What a dataset is, independent of where its files are: classes, channels, image size, normalisation and
the paper's augmentation (docs/methods.md §7). `ll.build(dataset=...)` and the CLI read everything from here.

The datasets registered here are fixed. ``imagefolder`` (the user's own images) is not: its classes come from
the folder it is read from, so its spec is made by `describe_dataset` (data/sources.py), which also returns
the registered spec of every other dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from locallearn.registry import Registry

PAD_MODES = ("reflect", "zeros")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_size: int  # square images, S×S
    mean: tuple[float, ...]  # of the un-normalised [0, 1] image, one value per channel
    std: tuple[float, ...]
    pad: int  # random-crop padding of the training augmentation
    pad_mode: str  # "reflect" or "zeros" (zeros of the [0, 1] image, i.e. black)
    flip: bool  # random horizontal flip in training
    # Images are (C, S, S). Defaults to 3 so that a spec written before greyscale datasets existed still
    # means RGB; every registered spec states it.
    channels: int = 3
    class_names: tuple[str, ...] | None = None  # name of label 0, 1, ...; None: the labels are the names
    read_from: str | None = None  # where the files are read from, where --data-dir alone does not say it (shown
    # at the start of a run): a folder dataset's held-out folder, a dataset found beside or outside --data-dir

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: num_classes must be >= 2, got {self.num_classes}.")
        if self.image_size < 1:
            raise ValueError(f"dataset {self.name!r}: image_size must be >= 1, got {self.image_size}.")
        if self.channels < 1:
            raise ValueError(f"dataset {self.name!r}: channels must be >= 1, got {self.channels}.")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"dataset {self.name!r}: mean and std need one value per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}."
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes."
            )
        if min(self.std) <= 0:
            raise ValueError(f"dataset {self.name!r}: std must be positive, got {self.std}.")
        if self.pad_mode not in PAD_MODES:
            valid = ", ".join(PAD_MODES)
            raise ValueError(
                f"dataset {self.name!r}: pad_mode must be one of {valid}, got {self.pad_mode!r}."
            )
        # Reflection mirrors about the border pixel, so it can reach at most S-1 pixels out.
        max_pad = self.image_size - 1 if self.pad_mode == "reflect" else self.image_size
        if not 0 <= self.pad <= max_pad:
            raise ValueError(f"dataset {self.name!r}: pad must be in [0, {max_pad}], got {self.pad}.")

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] image (..., C, H, W) → network input ``(x - mean) / std``."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (..., C, H, W) → the [0, 1] image ``x * std + mean`` (reconstruction targets)."""
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = like.dtype if like.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=like.device).view(self.channels, 1, 1)  # (C, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=like.device).view(self.channels, 1, 1)
        return mean, std


DATASETS: Registry[DatasetSpec] = Registry("dataset")

_CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
_CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
_HALF = (0.5, 0.5, 0.5)
# Pixel statistics of the digits training split as data/digits.py builds it (1,437 images, bilinear 8→32,
# all three channels equal); test_data_digits.py recomputes them. Unlike mean = std = 0.5 they give the
# network zero-mean, unit-variance inputs on this mostly-black dataset.
_DIGITS_MEAN = (0.3058, 0.3058, 0.3058)
_DIGITS_STD = (0.3241, 0.3241, 0.3241)

# Pixel statistics of Fashion-MNIST's 60,000 training images in [0, 1] (one grey channel), computed from the
# official files; test_data_fashion_mnist.py recomputes them where the files are installed.
_FASHION_MEAN = (0.2860,)
_FASHION_STD = (0.3530,)
# Label i's name, from the dataset's README.
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Label i's name: CIFAR-10's batches.meta (label_names) and STL-10's class_names.txt, as the official files
# list them.
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

for _spec in (
    DatasetSpec("cifar10", 10, 32, _CIFAR_MEAN, _CIFAR_STD, pad=4, pad_mode="reflect", flip=True, channels=3,
                class_names=_CIFAR10_CLASSES),
    DatasetSpec("cifar100", 100, 32, _CIFAR_MEAN, _CIFAR_STD, pad=4, pad_mode="reflect", flip=True, channels=3),
    DatasetSpec("svhn", 10, 32, _HALF, _HALF, pad=2, pad_mode="zeros", flip=False, channels=3),
    DatasetSpec("stl10", 10, 96, _HALF, _HALF, pad=4, pad_mode="zeros", flip=True, channels=3,
                class_names=_STL10_CLASSES),
    # scikit-learn's handwritten digits, upsampled to 32×32 (see data/digits.py); no flip: digits are not
    # mirror-symmetric.
    DatasetSpec("digits", 10, 32, _DIGITS_MEAN, _DIGITS_STD, pad=2, pad_mode="zeros", flip=False, channels=3),
    # Greyscale 28×28 clothing on a black background: zero padding is more background, and 2 pixels is the
    # usual MNIST-sized shift (SVHN's too). Flipped, unlike digits: the mirror image of every class is the
    # same class (a left shoe mirrored is a right shoe; shirts, bags and trousers are near symmetric).
    DatasetSpec(
        "fashion_mnist", 10, 28, _FASHION_MEAN, _FASHION_STD, pad=2, pad_mode="zeros", flip=True, channels=1,
        class_names=_FASHION_CLASSES,
    ),
):
    DATASETS.register(_spec.name, _spec)

# Datasets whose spec is not fixed but read from the user's folder (describe_dataset in data/sources.py).
FOLDER_DATASETS = ("imagefolder",)


def dataset_names() -> list[str]:
    """Every dataset name `describe_dataset` and `load_split` accept: the registered ones and imagefolder."""
    return sorted([*DATASETS.names(), *FOLDER_DATASETS])


def get_spec(name: str) -> DatasetSpec:
    """The registered spec of a fixed dataset; imagefolder's depends on its folder (`describe_dataset`)."""
    if name in FOLDER_DATASETS:
        raise ValueError(
            f"dataset {name!r} is described by the folder it is read from; use describe_dataset({name!r}, root)."
        )
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(dataset_names())}.")
    return DATASETS.get(name)
