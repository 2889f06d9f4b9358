"""Where each dataset comes from and which files make up its splits, and the two entry points the training
loop uses: `describe_dataset` (the spec, including imagefolder's, which its folder decides) and `load_split`
(images into memory).

On-disk layout under ``root`` is exactly the official distribution:
    cifar-10-batches-py/{data_batch_1..5, test_batch}     cifar-100-python/{train, test}
    train_32x32.mat, test_32x32.mat (SVHN)                  stl10_binary/{train,test}_{X,y}.bin
    {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Fashion-MNIST; gzipped or not, also in root/fashion-mnist/
    or where Debian's dataset-fashion-mnist installs them)
    train/<class>/*, test/<class>/* (imagefolder, see data/imagefolder.py)
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from locallearn.data.digits import load_digits_split
from locallearn.data.errors import CorruptFileError, DatasetError
from locallearn.data.formats import (
    Part,
    read_cifar,
    read_cifar_names,
    read_idx_images,
    read_idx_labels,
    read_stl_images,
    read_stl_labels,
    read_svhn,
)
from locallearn.data.imagefolder import (
    DEFAULT_IMAGE_SIZE,
    IMAGEFOLDER,
    image_folder_spec,
    load_image_folder_split,
    scan_image_folder,
)
from locallearn.data.specs import FOLDER_DATASETS, DatasetSpec, get_spec
from locallearn.registry import Registry
from locallearn.validate import Int

BUNDLED = ("digits",)  # datasets that ship with a dependency and need no files
# Where Debian's dataset-* packages install their files (/usr/share/datasets/<folder>): looked in after root.
DEBIAN_DATASETS = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Archive:
    """One file published by the dataset's authors."""

    url: str
    filename: str
    md5: str
    extract: bool  # a tarball to unpack; otherwise the file is used as downloaded
    members: tuple[str, ...] | None = None  # extract only these members (None: all)
    # What the MD5 is of: the file as downloaded, or the data inside its gzip wrapper. The second survives
    # recompression: distributors (Debian) repack .gz files, so the wrapper's MD5 differs between copies of
    # the same official data.
    md5_of: Literal["file", "gunzipped"] = "file"


@dataclass(frozen=True)
class DataFile:
    """One file of a split, relative to the root, with its reader and its official image count (readers
    refuse a file that declares more before decoding it)."""

    path: str
    read: Callable[..., Part]  # read(path, max_count=count)
    count: int
    also: tuple[str, ...] = ()  # other accepted names of the same file, e.g. uncompressed


@dataclass(frozen=True)
class Source:
    name: str
    archives: tuple[Archive, ...]
    train: tuple[DataFile, ...]
    test: tuple[DataFile, ...]
    folder: str | None = None  # the files may also sit in root/<folder> and DEBIAN_DATASETS/<folder>
    debian: str | None = None  # the Debian package that installs them there

    @property
    def files(self) -> tuple[DataFile, ...]:
        return self.train + self.test

    def places(self, root: Path) -> list[Path]:
        """Where the files are looked for, in order: root, root/<folder>, Debian's folder."""
        places = [root]
        if self.folder is not None:
            places.append(root / self.folder)
            if self.debian is not None:
                places.append(DEBIAN_DATASETS / self.folder)  # read here, not at import: tests move it
        return places


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
    # "train" only, as in the papers (docs/methods.md §7): the 531k-image "extra" split is not used.
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


# Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): the four IDX files of its README. The MD5s are of the
# decompressed IDX data (md5_of="gunzipped"), computed from Debian's dataset-fashion-mnist, which packages the
# official files; the README's MD5s are of its own .gz wrappers, which Debian's recompressed copies do not
# match. A file is accepted gzipped or uncompressed.
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_FASHION = {  # name → (MD5 of the decompressed file, reader, official count)
    "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", read_idx_images, 60_000),
    "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", read_idx_labels, 60_000),
    "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", read_idx_images, 10_000),
    "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", read_idx_labels, 10_000),
}
_fashion_files = {
    name: DataFile(f"{name}.gz", read, count, also=(name,)) for name, (_, read, count) in _FASHION.items()
}
_register(Source(
    name="fashion_mnist",
    archives=tuple(
        Archive(f"{_FASHION_URL}/{name}.gz", f"{name}.gz", md5, extract=False, md5_of="gunzipped")
        for name, (md5, _, _) in _FASHION.items()
    ),
    train=(_fashion_files["train-images-idx3-ubyte"], _fashion_files["train-labels-idx1-ubyte"]),
    test=(_fashion_files["t10k-images-idx3-ubyte"], _fashion_files["t10k-labels-idx1-ubyte"]),
    folder="fashion-mnist",
    debian="dataset-fashion-mnist",
))


def get_source(name: str) -> Source:
    if name in BUNDLED:
        raise DatasetError(f"{name} is bundled with scikit-learn and has no files to download or check.")
    if name in FOLDER_DATASETS:
        raise DatasetError(
            f"{name} is your own images under --data-dir DIR (DIR/train/<class>/, DIR/test/<class>/): "
            "there is nothing to download or check; training checks every image before it starts."
        )
    get_spec(name)  # an unknown name lists every dataset, not only the downloadable ones
    return SOURCES.get(name)


def download_hint(name: str, root: Path | str) -> str:
    download = f"`locallearn data download {name} --root {shlex.quote(str(root))}`"
    source = SOURCES.get(name) if name in SOURCES else None
    if source is None or source.debian is None:
        return f"get it with {download}"
    # The Makefile's target for a Debian-packaged dataset is named after its folder (`make fashion-mnist`).
    return f"get it with `apt-get install {source.debian}` (or `make {source.folder}`), or {download}"


def data_dir(source: Source, root: Path | str) -> Path:
    """The one place ``source``'s files are read from: the first of `Source.places` that holds any of them
    (a split is never assembled from two places), else root."""
    places = source.places(Path(root))
    return next((place for place in places if any(_find(place, f) for f in source.files)), places[0])


def locate(source: Source, file: DataFile, root: Path | str) -> Path | None:
    """The path of ``file`` under `data_dir`, under whichever of its names is there; None when missing."""
    return _find(data_dir(source, root), file)


def _find(directory: Path, file: DataFile) -> Path | None:
    return next((directory / n for n in (file.path, *file.also) if (directory / n).is_file()), None)


def read_file(source: Source, file: DataFile, root: Path, *, strict: bool = True) -> Part:
    """Read one file of ``source``; ``strict`` also requires the official image count."""
    path = locate(source, file, root)
    if path is None:
        place = data_dir(source, root)
        expected = ", ".join(" or ".join((f.path, *f.also)) for f in source.files)
        elsewhere = ", ".join(map(str, source.places(Path(root))[1:]))
        whole = next((other for other in source.places(Path(root))
                      if other != place and all(_find(other, f) for f in source.files)), None)
        partial = [str(found) for f in source.files if (found := _find(place, f)) is not None]
        fix = (f"complete the partial copy in {place}, or remove its {', '.join(partial)}: {whole} holds every file, "
               f"and is read where {place} holds none" if whole is not None else download_hint(source.name, root))
        raise DatasetError(
            f"{source.name}: missing {place / file.path} (expected under {root}: {expected}"
            + (f"; also looked in {elsewhere}" if elsewhere else "")
            + f"); {fix}."
        )
    part = file.read(path, max_count=file.count)
    if strict and len(part) != file.count:
        raise CorruptFileError(
            path, f"expected {file.count} {part.kind}, found {len(part)}: truncated or not the official file"
        )
    return part


def describe_dataset(
    name: str, root: Path | str | None, *, image_size: int | None = None, test_fraction: float | None = None,
    in_channels: int | None = None,
) -> DatasetSpec:
    """The spec of dataset ``name``: the registered one, or for imagefolder the one its folder under ``root``
    implies (classes and class names from the folder, ``image_size`` default DEFAULT_IMAGE_SIZE, RGB unless
    ``in_channels`` is 1). Decodes no image; a folder training could not use is refused here, in one line.

    ``image_size``, ``in_channels`` and ``test_fraction`` (the part of train/ held out as the test split) are
    options of imagefolder only; for a fixed dataset they must be None (or its own size and channels), since
    it has its images and its test split.
    """
    if name in FOLDER_DATASETS:
        return image_folder_spec(scan_image_folder(root, test_fraction), _folder_image_size(image_size),
                                 3 if in_channels is None else in_channels)
    if test_fraction is not None:
        raise ValueError(f"test_fraction: dataset {name} has its own test split; --test-fraction holds out part of "
                         f"an {IMAGEFOLDER}'s train/ folder instead, so drop it.")
    spec = get_spec(name)
    if image_size is not None and image_size != spec.image_size:
        s = spec.image_size
        raise ValueError(
            f"image_size: dataset {name} delivers {s}×{s} images, got image_size={image_size}; only "
            f"{IMAGEFOLDER} resizes its images."
        )
    if in_channels is not None and in_channels != spec.channels:
        raise ValueError(
            f"in_channels: dataset {name} has {spec.channels}-channel images, got in_channels={in_channels}; only "
            f"{IMAGEFOLDER} reads its images in the channels asked for."
        )
    if root is not None and name in SOURCES:  # found in root/<folder> or Debian's folder: say where
        place = data_dir(get_source(name), root)
        if place != Path(root):
            spec = dataclasses.replace(spec, read_from=f"files from {place}, not --data-dir itself")
        if spec.class_names is None and name == "cifar100":  # its 100 names, from the official meta file
            spec = dataclasses.replace(spec, class_names=read_cifar_names(
                place / _CIFAR100 / "meta", key=b"fine_label_names", count=spec.num_classes))
    return spec


def _folder_image_size(image_size: int | None) -> int:
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    return Int(1)(f"image_size of {IMAGEFOLDER}", image_size)


def load_split(
    name: str, root: Path | str | None, train: bool, *, strict: bool = True, image_size: int | None = None,
    test_fraction: float | None = None, limit: int | None = None, test_limit: int | None = None,
    log: Callable[[str], None] | None = None, in_channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, C, S, S) and labels int64 (N,) of the train or test split of dataset ``name``; C and
    S are those of ``describe_dataset(name, root, image_size=image_size, in_channels=in_channels)``. ``limit``: keep the first
    ``limit`` images (of an image folder, read class by class, the classes taken in turn: ``first_in_turn``;
    only those are decoded). ``test_limit``: the test split's limit, for an image folder's training split to
    name the test files it would read that are not images at all with its own unreadable ones.

    Every file is validated; a missing or corrupt one raises `DatasetError` naming it and the fix.
    ``strict`` requires the official number of images per file (turn it off only for test fixtures).
    ``root`` is ignored for the bundled digits; ``image_size``, ``in_channels``, ``test_fraction`` and ``log``
    (where an image folder's decoding progress goes when standard error is not a terminal) apply to imagefolder
    only.
    """
    spec = describe_dataset(name, root, image_size=image_size, test_fraction=test_fraction, in_channels=in_channels)
    if name in BUNDLED:
        x, y = load_digits_split(train)
        return (x, y) if limit is None else (x[:limit], y[:limit])
    if name in FOLDER_DATASETS:
        return load_image_folder_split(scan_image_folder(root, test_fraction), train, spec.image_size, limit,
                                       test_limit, log=log, channels=spec.channels)
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
    if len(x) != len(y):  # STL-10 and Fashion-MNIST keep images and labels in separate files
        paths = ", ".join(str(locate(source, f, root)) for f in files)
        raise DatasetError(
            f"{source.name}: {len(x)} images but {len(y)} labels in {paths}; "
            f"one of them is truncated: delete them and {download_hint(name, root)}."
        )
    if x.shape[1:] != (spec.channels, spec.image_size, spec.image_size):
        c, s = spec.channels, spec.image_size
        raise DatasetError(f"{source.name}: images are {x.shape[1:]}, expected ({c}, {s}, {s}).")
    return torch.from_numpy(x[:limit]), torch.from_numpy(y[:limit])
