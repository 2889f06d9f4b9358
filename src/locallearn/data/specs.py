"""What a dataset is, independent of where its files are: classes, image size, normalisation and the
paper's augmentation (METHODS.md 7). `ll.build(dataset=...)` and the CLI read everything from here."""

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
    mean: tuple[float, float, float]  # of the un-normalised [0, 1] image, per channel
    std: tuple[float, float, float]
    pad: int  # random-crop padding of the training augmentation
    pad_mode: str  # "reflect" or "zeros" (zeros of the [0, 1] image, i.e. black)
    flip: bool  # random horizontal flip in training

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: num_classes must be >= 2, got {self.num_classes}.")
        if self.image_size < 1:
            raise ValueError(f"dataset {self.name!r}: image_size must be >= 1, got {self.image_size}.")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"dataset {self.name!r}: mean and std need one value per RGB channel.")
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
        """[0, 1] image (..., 3, H, W) → network input ``(x - mean) / std``."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (..., 3, H, W) → the [0, 1] image ``x * std + mean`` (reconstruction targets)."""
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = like.dtype if like.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=like.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=like.device).view(3, 1, 1)
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

for _spec in (
    DatasetSpec("cifar10", 10, 32, _CIFAR_MEAN, _CIFAR_STD, pad=4, pad_mode="reflect", flip=True),
    DatasetSpec("cifar100", 100, 32, _CIFAR_MEAN, _CIFAR_STD, pad=4, pad_mode="reflect", flip=True),
    DatasetSpec("svhn", 10, 32, _HALF, _HALF, pad=2, pad_mode="zeros", flip=False),
    DatasetSpec("stl10", 10, 96, _HALF, _HALF, pad=4, pad_mode="zeros", flip=True),
    # scikit-learn's handwritten digits, upsampled to 32×32 (see data/digits.py); no flip: digits are not
    # mirror-symmetric.
    DatasetSpec("digits", 10, 32, _DIGITS_MEAN, _DIGITS_STD, pad=2, pad_mode="zeros", flip=False),
):
    DATASETS.register(_spec.name, _spec)


def get_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)
