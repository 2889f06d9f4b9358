"""Writers of small files in the official formats (the inverse of formats.py), so tests and demos can
build a dataset root without downloading anything: ``write_fake_dataset("stl10", tmp, 24, 16)``.
Load such a root with ``load_split(..., strict=False)``: the files hold fewer images than the official ones.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from locallearn.data.sources import get_source
from locallearn.data.specs import get_spec


def write_cifar(path: Path, images: np.ndarray, labels: np.ndarray, *, label_key: bytes = b"labels") -> None:
    """A CIFAR python batch: images uint8 (N, 3, 32, 32), labels 0..C-1 stored as a list under label_key."""
    batch = {
        b"batch_label": b"fixture batch",
        b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072),
        label_key: [int(v) for v in labels],
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)  # the protocol of the original (Python 2) files


def write_svhn(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """An SVHN .mat: X (32, 32, 3, N) uint8, y (N, 1) uint8 with the digit 0 written as 10."""
    from scipy.io import savemat

    y = np.where(np.asarray(labels) == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    x = np.asarray(images, dtype=np.uint8).transpose(2, 3, 1, 0)  # (N, C, H, W) → (H, W, C, N)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": np.ascontiguousarray(x), "y": y}, format="5")


def write_stl(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """STL-10 binaries {split}_X.bin (each channel column-major) and {split}_y.bin (labels 1..10)."""
    directory.mkdir(parents=True, exist_ok=True)
    x = np.asarray(images, dtype=np.uint8).transpose(0, 1, 3, 2)  # (N, C, H, W) → (N, C, W, H)
    np.ascontiguousarray(x).tofile(directory / f"{split}_X.bin")
    (np.asarray(labels) + 1).astype(np.uint8).tofile(directory / f"{split}_y.bin")


def write_idx(path: Path, data: np.ndarray, *, gzipped: bool = True) -> None:
    """An IDX file of uint8 ``data`` of any shape (N, ...): magic 0x0000080D (D dimensions), the dimensions
    as big-endian uint32, then the bytes in C order; gzipped (mtime 0, so the bytes are reproducible) or not."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    header = (0x0800 | data.ndim).to_bytes(4, "big") + np.array(data.shape, dtype=">u4").tobytes()
    raw = header + data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0) if gzipped else raw)


def write_fashion_mnist(
    directory: Path, split: str, images: np.ndarray, labels: np.ndarray, *, gzipped: bool = True
) -> None:
    """Fashion-MNIST's {split}-images-idx3-ubyte and {split}-labels-idx1-ubyte (split: train or t10k), with
    ".gz" when ``gzipped``; images uint8 (N, 1, 28, 28), labels 0..9."""
    suffix = ".gz" if gzipped else ""
    x = np.asarray(images).reshape(len(images), *np.shape(images)[-2:])  # (N, 1, H, W) → (N, H, W)
    write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", x, gzipped=gzipped)
    write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", np.asarray(labels), gzipped=gzipped)


def write_fake_dataset(name: str, root: Path, n_train: int, n_test: int, *, seed: int = 0) -> None:
    """Random images and labels in ``name``'s official layout under ``root`` (every train file of CIFAR-10
    gets ``n_train`` images)."""
    spec, source = get_spec(name), get_source(name)
    rng = np.random.default_rng(seed)
    root = Path(root)

    def fake(n: int) -> tuple[np.ndarray, np.ndarray]:
        c, size = spec.channels, spec.image_size
        return rng.integers(0, 256, (n, c, size, size), dtype=np.uint8), rng.integers(0, spec.num_classes, n)

    if name in ("cifar10", "cifar100"):
        key = b"labels" if name == "cifar10" else b"fine_labels"
        for file in source.train:
            write_cifar(root / file.path, *fake(n_train), label_key=key)
        for file in source.test:
            write_cifar(root / file.path, *fake(n_test), label_key=key)
    elif name == "svhn":
        write_svhn(root / source.train[0].path, *fake(n_train))
        write_svhn(root / source.test[0].path, *fake(n_test))
    elif name == "stl10":
        directory = root / Path(source.train[0].path).parent
        write_stl(directory, "train", *fake(n_train))
        write_stl(directory, "test", *fake(n_test))
    elif name == "fashion_mnist":
        write_fashion_mnist(root, "train", *fake(n_train))
        write_fashion_mnist(root, "t10k", *fake(n_test))
    else:
        raise ValueError(f"no fixture writer for dataset {name!r}.")
