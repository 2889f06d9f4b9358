"""The IDX reader (Fashion-MNIST's format) on small files written here, gzipped and plain: layout, header
checks before any data is read, and every kind of corrupt file failing with one line that names it."""

from __future__ import annotations

import gzip
import tracemalloc

import numpy as np
import pytest

from locallearn.data import CorruptFileError, DatasetError, load_split
from locallearn.data.fixtures import write_fashion_mnist, write_idx
from locallearn.data.formats import read_idx_images, read_idx_labels


def pattern(n: int) -> np.ndarray:
    """(n, 1, 28, 28) images whose every pixel is distinct and asymmetric, so a transposition shows."""
    return (np.arange(n * 784, dtype=np.int64).reshape(n, 1, 28, 28) * 7 % 251).astype(np.uint8)


def idx_bytes(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return magic.to_bytes(4, "big") + np.array(dims, dtype=">u4").tobytes() + data


def assert_corrupt(err: pytest.ExceptionInfo, path, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("gzipped", [True, False])
def test_round_trip_layout(tmp_path, gzipped):
    images, labels = pattern(5), np.array([0, 9, 3, 4, 5])
    write_fashion_mnist(tmp_path, "t10k", images, labels, gzipped=gzipped)
    suffix = ".gz" if gzipped else ""
    path = tmp_path / f"t10k-images-idx3-ubyte{suffix}"
    raw = (gzip.decompress if gzipped else bytes)(path.read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == bytes.fromhex("00000005 0000001c 0000001c")
    part = read_idx_images(path, max_count=10)
    n, h, w = 3, 4, 17
    assert part.images[n, 0, h, w] == raw[16 + n * 784 + h * 28 + w]  # row-major: a row is 28 bytes
    assert part.images.shape == (5, 1, 28, 28) and part.images.dtype == np.uint8
    assert np.array_equal(part.images, images) and part.images.flags.writeable
    y = read_idx_labels(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", max_count=10).labels
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "plain-but-named.gz"
    write_idx(path, pattern(2)[:, 0], gzipped=False)
    assert np.array_equal(read_idx_images(path, max_count=2).images, pattern(2))


@pytest.mark.parametrize(
    "contents, needles",
    [
        (idx_bytes(0x0801, (2,), b"\x00\x01"), ["magic number 0x00000801 (an IDX label file)", "expected 0x00000803"]),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), ["magic number 0x89504e47", "expected 0x00000803"]),
        (idx_bytes(0x0803, (2, 32, 32), bytes(2 * 1024)), ["declares 32×32 images, expected 28×28"]),
        (idx_bytes(0x0803, (2, 28, 28), bytes(784 + 100)), ["truncated: 884 of the 1568 data bytes"]),
        (idx_bytes(0x0803, (2, 28, 28), bytes(2 * 784 + 3)), ["trailing data after the 2 images"]),
        (idx_bytes(0x0803, (11, 28, 28), bytes(11 * 784)), ["declares 11 images, more than the official 10"]),
        (b"\x00\x00\x08", ["a truncated header"]),
        (idx_bytes(0x0803, (2, 28, 28), b"")[:10], ["truncated header"]),
        (b"", ["a truncated header"]),
    ],
)
@pytest.mark.parametrize("gzipped", [True, False])
def test_bad_image_files(tmp_path, contents, needles, gzipped):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(contents) if gzipped else contents)
    with pytest.raises(CorruptFileError) as err:
        read_idx_images(path, max_count=10)
    assert_corrupt(err, path, *needles)


@pytest.mark.parametrize(
    "contents, needle",
    [
        (idx_bytes(0x0801, (3,), bytes([0, 9, 10])), "label 10 out of range 0..9"),
        (idx_bytes(0x0803, (1, 28, 28), bytes(784)), "expected 0x00000801 (an IDX label file)"),
        (idx_bytes(0x0801, (4,), bytes([1, 2])), "truncated: 2 of the 4 data bytes"),
    ],
)
def test_bad_label_files(tmp_path, contents, needle):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(contents))
    with pytest.raises(CorruptFileError) as err:
        read_idx_labels(path, max_count=10)
    assert_corrupt(err, path, needle)


def test_broken_gzip_streams(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, pattern(6)[:, 0])
    good = path.read_bytes()
    for broken, needle in (
        (good[: len(good) // 2], "not a readable gzip stream (EOFError"),  # cut short
        (good[:20] + bytes(50) + good[70:], "not a readable gzip stream"),  # damaged deflate data
        (good[:-8] + bytes(8), "not a readable gzip stream (BadGzipFile: CRC check failed"),  # wrong CRC
        (good + b"garbage!", "not a readable gzip stream (BadGzipFile"),  # trailing bytes after the stream
    ):
        path.write_bytes(broken)
        with pytest.raises(CorruptFileError) as err:
            read_idx_images(path, max_count=10)
        assert_corrupt(err, path, needle)


def test_declared_count_is_refused_before_allocating(tmp_path):
    """A 30-byte file claiming a billion images must not allocate 784 GB (nor 47 MB) before being refused."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x0803, (1_000_000_000, 28, 28), bytes(784))))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError) as err:
            read_idx_images(path, max_count=60_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_corrupt(err, path, "declares 1000000000 images, more than the official 60000")
    assert peak < 1 << 20


def test_reading_allocates_the_data_once(tmp_path):
    """The data go straight into their array: peak memory is one copy, not a second for a temporary."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((20_000, 28, 28), np.uint8))  # 15.7 MB of pixels, 16 KB compressed
    tracemalloc.start()
    try:
        part = read_idx_images(path, max_count=20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Beyond the array, only the reader's fixed-size buffers (a few MiB), far from a second 15.7 MB.
    assert part.images.nbytes == 20_000 * 784 and peak < part.images.nbytes + (5 << 20)


def test_split_with_different_image_and_label_counts(tmp_path):
    write_fashion_mnist(tmp_path, "train", pattern(5), np.arange(5))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(4, dtype=np.uint8))
    with pytest.raises(DatasetError) as err:
        load_split("fashion_mnist", tmp_path, train=True, strict=False)
    message = str(err.value)
    assert "\n" not in message and "5 images but 4 labels" in message
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in message


def test_split_with_a_corrupt_file_names_it_and_the_fix(tmp_path):
    write_fashion_mnist(tmp_path, "t10k", pattern(3), np.arange(3))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x0801, (3,), bytes([1, 2, 12]))))
    with pytest.raises(DatasetError) as err:
        load_split("fashion_mnist", tmp_path, train=False, strict=False)
    assert_corrupt(err, path, "label 12 out of range 0..9", "delete it", "apt-get install dataset-fashion-mnist")


def test_strict_requires_the_official_counts(tmp_path):
    write_fashion_mnist(tmp_path, "t10k", pattern(3), np.arange(3))
    with pytest.raises(DatasetError) as err:
        load_split("fashion_mnist", tmp_path, train=False)
    assert_corrupt(err, tmp_path / "t10k-images-idx3-ubyte.gz", "expected 10000 images, found 3")
