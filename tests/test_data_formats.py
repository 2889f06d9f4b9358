"""Official-format readers on small files written in each format: layout, dtypes, label mapping, and every
kind of bad input (missing, truncated, corrupt, wrong shape, labels out of range) failing with one line
that names the file."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from locallearn.data import DatasetError, check, load_split
from locallearn.data.fixtures import write_cifar, write_fake_dataset, write_stl, write_svhn
from locallearn.data.sources import SOURCES

N_TRAIN, N_TEST = 24, 16


def pattern(n: int, size: int) -> np.ndarray:
    """Images whose every pixel is distinct and asymmetric, so any transposition or flip shows."""
    values = np.arange(n * 3 * size * size, dtype=np.int64).reshape(n, 3, size, size)
    return (values * 7 % 251).astype(np.uint8)


def assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# --- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "stl10"])
def test_round_trip_shapes_dtypes_labels(tmp_path, name):
    write_fake_dataset(name, tmp_path, N_TRAIN, N_TEST)
    files_per_train = len(SOURCES.get(name).train) if name == "cifar10" else 1
    for train, n in ((True, N_TRAIN * files_per_train), (False, N_TEST)):
        images, labels = load_split(name, tmp_path, train, strict=False)
        size = 96 if name == "stl10" else 32
        assert images.shape == (n, 3, size, size) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        num_classes = 100 if name == "cifar100" else 10
        assert 0 <= labels.min() and labels.max() < num_classes
    assert check(name, tmp_path, strict=False).ok


def test_cifar_layout_is_rgb_planes_row_major(tmp_path):
    images, labels = pattern(5, 32), np.array([0, 9, 3, 4, 5])
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar(path, images, labels)
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]  # (N, 3072) exactly as the file stores it
    x, y = load_split("cifar10", tmp_path, train=False, strict=False)
    c, h, w = 2, 5, 17
    assert x[3, c, h, w] == raw[3, c * 1024 + h * 32 + w]
    assert np.array_equal(x.numpy(), images) and y.tolist() == labels.tolist()


def test_cifar100_reads_fine_labels(tmp_path):
    labels = np.array([0, 37, 99, 12])
    write_cifar(tmp_path / "cifar-100-python" / "test", pattern(4, 32), labels, label_key=b"fine_labels")
    _, y = load_split("cifar100", tmp_path, train=False, strict=False)
    assert y.tolist() == labels.tolist()  # not the coarse labels (labels // 5) the file also holds


def test_cifar_python2_pickle_naming_numpy_core(tmp_path):
    """The real files were pickled by Python 2 with the old module path numpy.core.multiarray."""
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar(path, pattern(3, 32), np.array([1, 2, 3]))
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, _ = load_split("cifar10", tmp_path, train=False, strict=False)
    assert np.array_equal(x.numpy(), pattern(3, 32))


def test_svhn_maps_10_to_0_and_transposes(tmp_path):
    images, labels = pattern(6, 32), np.array([0, 1, 9, 0, 5, 3])
    path = tmp_path / "test_32x32.mat"
    write_svhn(path, images, labels)
    from scipy.io import loadmat

    raw = loadmat(path)
    assert raw["X"].shape == (32, 32, 3, 6) and raw["y"].ravel().tolist() == [10, 1, 9, 10, 5, 3]
    x, y = load_split("svhn", tmp_path, train=False, strict=False)
    assert y.tolist() == [0, 1, 9, 0, 5, 3]
    assert x[4, 1, 2, 30] == raw["X"][2, 30, 1, 4]  # X[h, w, c, n] → images[n, c, h, w]
    assert np.array_equal(x.numpy(), images)


def test_stl_column_major_layout(tmp_path):
    images, labels = pattern(3, 96), np.array([0, 9, 4])
    directory = tmp_path / "stl10_binary"
    write_stl(directory, "test", images, labels)
    raw = np.fromfile(directory / "test_X.bin", dtype=np.uint8)
    # Column-major: within a channel, consecutive bytes walk down a column (row index fastest).
    n, c, h, w = 2, 1, 10, 70
    assert raw[n * 27648 + c * 9216 + w * 96 + h] == images[n, c, h, w]
    assert np.fromfile(directory / "test_y.bin", dtype=np.uint8).tolist() == [1, 10, 5]
    x, y = load_split("stl10", tmp_path, train=False, strict=False)
    assert np.array_equal(x.numpy(), images) and y.tolist() == [0, 9, 4]


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "stl10"])
def test_missing_directory_names_files_and_download(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        load_split(name, tmp_path / "nowhere", train=True)
    first = SOURCES.get(name).train[0].path
    assert_one_line(err, first, f"locallearn data download {name} --root {tmp_path / 'nowhere'}")


def test_strict_requires_official_counts(tmp_path):
    write_fake_dataset("stl10", tmp_path, N_TRAIN, N_TEST)
    with pytest.raises(DatasetError) as err:
        load_split("stl10", tmp_path, train=True)
    assert_one_line(err, "train_X.bin", "expected 5000 images, found 24", "locallearn data download stl10")


def cifar_path(tmp_path):
    write_fake_dataset("cifar10", tmp_path, N_TRAIN, N_TEST)
    return tmp_path / "cifar-10-batches-py" / "data_batch_3"


def truncate(path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def test_cifar_truncated_pickle(tmp_path):
    path = cifar_path(tmp_path)
    truncate(path)
    with pytest.raises(DatasetError) as err:
        load_split("cifar10", tmp_path, train=True, strict=False)
    assert_one_line(err, str(path), "not a readable pickle")


def test_cifar_garbage_and_hostile_pickles(tmp_path):
    path = cifar_path(tmp_path)
    path.write_bytes(os.urandom(1000))
    with pytest.raises(DatasetError) as err:
        load_split("cifar10", tmp_path, train=True, strict=False)
    assert_one_line(err, str(path))
    # A pickle that would call os.system while loading is refused, not run.
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DatasetError) as err:
        load_split("cifar10", tmp_path, train=True, strict=False)
    assert_one_line(err, str(path), "refusing to load")
    assert not (tmp_path / "pwned").exists()


class Exploit:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.mark.parametrize(
    "batch, needle",
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, "uint8 (N, 3072)"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "uint8 (N, 3072)"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "4 images but 3 labels"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 10, 2]}, "label 10 out of range 0..9"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, -1, 1, 2]}, "label -1 out of range"),
        ({b"data": np.zeros((4, 3072), np.uint8)}, "expected a dict"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_cifar_bad_contents(tmp_path, batch, needle):
    path = cifar_path(tmp_path)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError) as err:
        load_split("cifar10", tmp_path, train=True, strict=False)
    assert_one_line(err, str(path), needle)


def test_cifar100_label_range_is_100(tmp_path):
    path = tmp_path / "cifar-100-python" / "test"
    write_cifar(path, pattern(2, 32), np.array([99, 100]), label_key=b"fine_labels")
    with pytest.raises(DatasetError) as err:
        load_split("cifar100", tmp_path, train=False, strict=False)
    assert_one_line(err, "label 100 out of range 0..99")


def test_svhn_truncated_and_wrong_shapes(tmp_path):
    from scipy.io import savemat

    path = tmp_path / "train_32x32.mat"
    write_svhn(path, pattern(8, 32), np.arange(8))
    truncate(path)
    with pytest.raises(DatasetError) as err:
        load_split("svhn", tmp_path, train=True, strict=False)
    assert_one_line(err, str(path), "not a readable MATLAB")

    two = np.zeros((32, 32, 3, 2), np.uint8)
    for contents, needle in (
        ({"X": np.zeros((32, 32, 4), np.uint8), "y": np.ones((1, 1), np.uint8)}, "(32, 32, 3, N)"),
        ({"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)}, "(32, 32, 3, N)"),
        ({"X": two, "y": np.ones((3, 1), np.uint8)}, "2 images but 3 labels"),
        ({"X": two, "y": np.array([[1], [11]], np.uint8)}, "label 11 out of range 1..10"),
        ({"X": two, "y": np.array([[0], [1]], np.uint8)}, "label 0 out of range 1..10"),
        ({"X": two}, "expected variables X and y"),
    ):
        savemat(path, contents, format="5")
        with pytest.raises(DatasetError) as err:
            load_split("svhn", tmp_path, train=True, strict=False)
        assert_one_line(err, str(path), needle)


def test_stl_bad_sizes_and_labels(tmp_path):
    write_fake_dataset("stl10", tmp_path, N_TRAIN, N_TEST)
    x_path, y_path = tmp_path / "stl10_binary" / "train_X.bin", tmp_path / "stl10_binary" / "train_y.bin"
    good_x, good_y = x_path.read_bytes(), y_path.read_bytes()

    x_path.write_bytes(good_x[:-100])  # truncated mid-image
    with pytest.raises(DatasetError) as err:
        load_split("stl10", tmp_path, train=True, strict=False)
    assert_one_line(err, str(x_path), "not a whole number of 3×96×96 images")

    x_path.write_bytes(good_x[: 27648 * 20])  # truncated on an image boundary: the label count disagrees
    with pytest.raises(DatasetError) as err:
        load_split("stl10", tmp_path, train=True, strict=False)
    assert_one_line(err, "20 images but 24 labels", str(x_path), str(y_path))

    x_path.write_bytes(good_x)
    for labels, needle in (
        (b"\x00" + good_y[1:], "label 0 out of range 1..10"),
        (good_y[:-1] + b"\x0b", "label 11"),
    ):
        y_path.write_bytes(labels)
        with pytest.raises(DatasetError) as err:
            load_split("stl10", tmp_path, train=True, strict=False)
        assert_one_line(err, str(y_path), needle)

    y_path.write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        load_split("stl10", tmp_path, train=True, strict=False)
    assert_one_line(err, str(y_path), "empty")


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="valid datasets: cifar10, cifar100, digits, fashion_mnist, imagefolder, stl10, svhn"):
        load_split("mnist", tmp_path, train=True)


# --- check ---------------------------------------------------------------------------------------------


def test_check_reports_present_missing_corrupt(tmp_path):
    write_fake_dataset("cifar10", tmp_path, N_TRAIN, N_TEST)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").unlink()
    truncate(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    report = check("cifar10", tmp_path, strict=False)
    status = {f.path.split("/")[-1]: f.status for f in report.files}
    assert status == {
        "data_batch_1": "present", "data_batch_2": "missing", "data_batch_3": "present",
        "data_batch_4": "corrupt", "data_batch_5": "present", "test_batch": "present",
    }
    assert not report.ok
    text = str(report)
    assert "locallearn data download cifar10" in text and "not a readable pickle" in text
    # Strict (the default) also flags files that hold fewer images than the official ones.
    assert check("cifar10", tmp_path).files[0].status == "corrupt"


def test_check_bundled_digits(tmp_path):
    report = check("digits", tmp_path)
    assert report.ok and "bundled" in str(report)
