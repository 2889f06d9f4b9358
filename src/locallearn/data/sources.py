"""Where each dataset comes from and which files make up its splits, and `load_split`, the one entry point
the training loop uses to get images into memory.

On-disk layout under ``root`` is exactly the official distribution:
    cifar-10-batches-py/{data_batch_1..5, test_batch}     cifar-100-python/{train, test}
    train_32x32.mat, test_32x32.mat (SVHN)                  stl10_binary/{train,test}_{X,y}.bin
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from locallearn.data.digits import load_digits_split
from locallearn.data.errors import CorruptFileError, DatasetError
from locallearn.data.formats import Part, read_cifar, read_stl_images, read_stl_labels, read_svhn
from locallearn.data.specs import get_spec
from locallearn.registry import Registry

BUNDLED = ("digits",)  # datasets that ship with a dependency and need no files


@dataclass(frozen=True)
class Archive:
    """One file published by the dataset's authors."""

    url: str
    filename: str
    md5: str
    extract: bool  # a tarball to unpack; otherwise the file is used as downloaded
    members: tuple[str, ...] | None = None  # extract only these members (None: all)


@dataclass(frozen=True)
class DataFile:
    """One file of a split, relative to the root, with its reader and its official image count."""

    path: str
    read: Callable[[Path], Part]
    count: int


@dataclass(frozen=True)
class Source:
    name: str
    archives: tuple[Archive, ...]
    train: tuple[DataFile, ...]
    test: tuple[DataFile, ...]

    @property
    def files(self) -> tuple[DataFile, ...]:
        return self.train + self.test


SOURCES: Registry[Source] = Registry("downloadable dataset")


def _register(source: Source) -> None:
    SOURCES.register(source.name, source)


# Checksums. CIFAR: the MD5s published next to the archives on https://www.cs.toronto.edu/~kriz/cifar.html.
# SVHN and STL-10 publish none; these are the MD5s of the files those URLs have served unchanged for a
# decade, as recorded by the widely used loaders.
_CIFAR10 = "cifar-10-batches-py"
_cifar10 = partial(read_cifar, label_key=b"labels", num_classes=10)
_register(Source(
    name="cifar10",
    archives=(Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        extract=True,
    ),),
    train=tuple(DataFile(f"{_CIFAR10}/data_batch_{k}", _cifar10, 10_000) for k in range(1, 6)),
    test=(DataFile(f"{_CIFAR10}/test_batch", _cifar10, 10_000),),
))

_CIFAR100 = "cifar-100-python"
_cifar100 = partial(read_cifar, label_key=b"fine_labels", num_classes=100)
_register(Source(
    name="cifar100",
    archives=(Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        extract=True,
    ),),
    train=(DataFile(f"{_CIFAR100}/train", _cifar100, 50_000),),
    test=(DataFile(f"{_CIFAR100}/test", _cifar100, 10_000),),
))

_register(Source(
    name="svhn",
    archives=(
        Archive(
            url="http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            filename="train_32x32.mat",
            md5="e26dedcc434d2e4c54c9b2d4a06d8373",
            extract=False,
        ),
        Archive(
            url="http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            filename="test_32x32.mat",
            md5="eb5a983be6a315427106f1b69d0f8d3b",
            extract=False,
        ),
    ),
    # "train" only, as in the papers (METHODS.md 7): the 531k-image "extra" split is not used.
    train=(DataFile("train_32x32.mat", read_svhn, 73_257),),
    test=(DataFile("test_32x32.mat", read_svhn, 26_032),),
))

_STL = "stl10_binary"
_register(Source(
    name="stl10",
    archives=(Archive(
        url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        filename="stl10_binary.tar.gz",
        md5="91f7769df0f17e558f3565bffb0c7dfb",
        extract=True,
        # Only the labelled splits are unpacked: unlabeled_X.bin alone is 2.6 GB and no experiment uses it.
        members=(
            f"{_STL}/train_X.bin", f"{_STL}/train_y.bin", f"{_STL}/test_X.bin", f"{_STL}/test_y.bin",
            f"{_STL}/class_names.txt",
        ),
    ),),
    train=(DataFile(f"{_STL}/train_X.bin", read_stl_images, 5_000),
           DataFile(f"{_STL}/train_y.bin", read_stl_labels, 5_000)),
    test=(DataFile(f"{_STL}/test_X.bin", read_stl_images, 8_000),
          DataFile(f"{_STL}/test_y.bin", read_stl_labels, 8_000)),
))


def get_source(name: str) -> Source:
    if name in BUNDLED:
        raise DatasetError(f"{name} is bundled with scikit-learn and has no files to download or check.")
    get_spec(name)  # an unknown name lists every dataset, not only the downloadable ones
    return SOURCES.get(name)


def download_hint(name: str, root: Path | str) -> str:
    return f"get it with `locallearn data download {name} --root {root}`"


def read_file(source: Source, file: DataFile, root: Path, *, strict: bool = True) -> Part:
    """Read one file of ``source``; ``strict`` also requires the official image count."""
    path = Path(root) / file.path
    if not path.is_file():
        expected = ", ".join(f.path for f in source.files)
        raise DatasetError(
            f"{source.name}: missing {path} (expected under {root}: {expected}); "
            f"{download_hint(source.name, root)}."
        )
    part = file.read(path)
    if strict and len(part) != file.count:
        raise CorruptFileError(
            path, f"expected {file.count} {part.kind}, found {len(part)}: truncated or not the official file"
        )
    return part


def load_split(
    name: str, root: Path | str, train: bool, *, strict: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, S, S) and labels int64 (N,) of the train or test split of dataset ``name``.

    Every file is validated; a missing or corrupt one raises `DatasetError` naming it and the fix.
    ``strict`` requires the official number of images per file (turn it off only for test fixtures).
    ``root`` is ignored for the bundled digits.
    """
    spec = get_spec(name)
    if name in BUNDLED:
        return load_digits_split(train)
    source = get_source(name)
    root = Path(root)
    files = source.train if train else source.test
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for file in files:
        try:
            part = read_file(source, file, root, strict=strict)
        except CorruptFileError as err:
            raise DatasetError(f"{source.name}: {err}; delete it and {download_hint(name, root)}.") from None
        if part.images is not None:
            images.append(part.images)
        if part.labels is not None:
            labels.append(part.labels)
    x = np.concatenate(images) if len(images) > 1 else images[0]
    y = np.concatenate(labels) if len(labels) > 1 else labels[0]
    if len(x) != len(y):  # STL-10 keeps images and labels in separate files
        paths = ", ".join(str(root / f.path) for f in files)
        raise DatasetError(
            f"{source.name}: {len(x)} images but {len(y)} labels in {paths}; "
            f"one of them is truncated: delete them and {download_hint(name, root)}."
        )
    if x.shape[1:] != (3, spec.image_size, spec.image_size):
        s = spec.image_size
        raise DatasetError(f"{source.name}: images are {x.shape[1:]}, expected (3, {s}, {s}).")
    return torch.from_numpy(x), torch.from_numpy(y)
