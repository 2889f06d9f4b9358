"""Sizes are checked before decoding: small or sparse files that declare far more images than the official
ones are refused without the decoder ever running and without a large allocation. (IDX: test_data_idx.py.)"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

from locallearn.data import DatasetError, load_split
from locallearn.data import formats
from locallearn.data.fixtures import write_cifar, write_fake_dataset, write_svhn


def never(name: str):
    def called(*args, **kwargs):
        raise AssertionError(f"{name} ran on a file whose declared size should have been refused")

    return called


def refused_cheaply(load, *needles: str) -> None:
    """``load()`` raises a one-line DatasetError with ``needles`` and allocates under 1 MiB doing so."""
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as err:
            load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert peak < 1 << 20, f"{peak} bytes allocated before refusing"


def test_stl10_sparse_file_is_refused_by_its_length(tmp_path, monkeypatch):
    write_fake_dataset("stl10", tmp_path, 4, 4)
    images = tmp_path / "stl10_binary" / "train_X.bin"
    with open(images, "r+b") as f:
        f.truncate(40_000 * 27_648)  # 1.1 GB, sparse: nothing written, nothing on disk
    monkeypatch.setattr(np, "fromfile", never("np.fromfile"))
    refused_cheaply(
        lambda: load_split("stl10", tmp_path, train=True, strict=False),
        str(images), "is 40000 images, more than the official 5000",
    )


def test_stl10_sparse_label_file(tmp_path, monkeypatch):
    write_fake_dataset("stl10", tmp_path, 4, 4)
    labels = tmp_path / "stl10_binary" / "test_y.bin"
    with open(labels, "r+b") as f:
        f.truncate(1 << 30)
    real_fromfile = np.fromfile

    def images_only(path, *args, **kwargs):  # the image file is read; the label file must not be
        assert not str(path).endswith("_y.bin"), "np.fromfile ran on the oversized label file"
        return real_fromfile(path, *args, **kwargs)

    monkeypatch.setattr(np, "fromfile", images_only)
    with pytest.raises(DatasetError, match=r"1073741824 labels \(one byte each\), more than the official 8000"):
        load_split("stl10", tmp_path, train=False, strict=False)


def svhn_declaring(path, n_declared: int) -> None:
    """An SVHN .mat holding 2 images whose X header declares ``n_declared`` (what a zlib-compressed file can
    do in 1 MB): the dimensions element (miINT32 32, 32, 3, 2) is rewritten in place."""
    write_svhn(path, np.zeros((2, 3, 32, 32), np.uint8), np.array([1, 2]))
    raw = path.read_bytes()
    dims = struct.pack("<4i", 32, 32, 3, 2)
    assert raw.count(dims) == 1
    path.write_bytes(raw.replace(dims, struct.pack("<4i", 32, 32, 3, n_declared)))


def test_svhn_header_is_checked_before_loading(tmp_path, monkeypatch):
    import scipy.io

    path = tmp_path / "train_32x32.mat"
    svhn_declaring(path, 350_000)
    assert scipy.io.whosmat(path)[0][1] == (32, 32, 3, 350_000)
    monkeypatch.setattr(scipy.io, "loadmat", never("scipy.io.loadmat"))
    refused_cheaply(
        lambda: load_split("svhn", tmp_path, train=True, strict=False),
        str(path), "X declares 350000 images, more than the official 73257",
    )


def test_svhn_labels_must_match_the_declared_images_before_loading(tmp_path, monkeypatch):
    import scipy.io

    path = tmp_path / "test_32x32.mat"
    svhn_declaring(path, 5)  # 5 images declared, y still declares 2 labels
    monkeypatch.setattr(scipy.io, "loadmat", never("scipy.io.loadmat"))
    with pytest.raises(DatasetError, match="5 images but 2 labels"):
        load_split("svhn", tmp_path, train=False, strict=False)


def test_cifar_file_longer_than_any_official_batch_is_not_unpickled(tmp_path, monkeypatch):
    write_fake_dataset("cifar10", tmp_path, 4, 4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"  # the first file read
    with open(path, "r+b") as f:
        f.truncate(10_000 * (2 * 3072 + 1024) + 1)  # one byte over the bound, sparse
    monkeypatch.setattr(formats, "_ArrayUnpickler", never("the unpickler"))
    refused_cheaply(
        lambda: load_split("cifar10", tmp_path, train=True, strict=False),
        str(path), "more than a batch of the official 10000 images takes",
    )


def test_cifar_bound_admits_python3_pickles_of_the_official_size(tmp_path):
    """The bound is not too tight: a batch written by Python 3 (pixels ≥ 128 take two bytes of UTF-8) of
    exactly the official count is read."""
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar(path, np.full((40, 3, 32, 32), 255, np.uint8), np.arange(40) % 10)
    assert path.stat().st_size > 40 * 2 * 3072  # the worst case the bound allows for
    part = formats.read_cifar(path, max_count=40, label_key=b"labels", num_classes=10)
    assert len(part) == 40
    with pytest.raises(DatasetError, match="more than a batch of the official 20 images"):
        formats.read_cifar(path, max_count=20, label_key=b"labels", num_classes=10)
