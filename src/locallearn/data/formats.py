"""Readers for the official file formats, one function per format. Each reads one file, checks that it
holds what the format promises (shape, dtype, label range) and returns a `Part` in our layout: images
uint8 (N, 3, H, W), labels int64 (N,) in 0..C-1. Any failure raises `CorruptFileError` naming the file.

Layouts (from the datasets' own documentation):
- CIFAR-10/100 python: a pickled dict per file; b"data" is (N, 3072) uint8, each row R, G, B planes of a
  row-major 32×32 image; labels are b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100).
- SVHN cropped digits: a MATLAB v5 file with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10, where 10 is
  the digit 0.
- STL-10 binary: *_X.bin is raw uint8, N × 3 × 96 × 96, each channel stored column-major (MATLAB order);
  *_y.bin is one uint8 label per image in 1..10.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locallearn.data.errors import CorruptFileError

STL_SIZE = 96
_STL_IMAGE_BYTES = 3 * STL_SIZE * STL_SIZE  # 27,648


@dataclass(frozen=True)
class Part:
    """What one file contributes to a split: images, labels, or both."""

    images: np.ndarray | None = None  # uint8 (N, 3, H, W)
    labels: np.ndarray | None = None  # int64 (N,)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.labels)

    @property
    def kind(self) -> str:
        return "images" if self.images is not None else "labels"


# --- CIFAR ---------------------------------------------------------------------------------------------

# The globals a CIFAR pickle may name: numpy's array reconstruction (numpy.core in the original Python 2
# pickles, numpy._core in NumPy 2), and codecs.encode, which protocol-2 pickles use for bytes. Anything
# else is refused, so a corrupt or hostile file cannot run code while it is read.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if (canonical, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if canonical.startswith("numpy.core") and hasattr(np, "_core"):
            module = canonical.replace("numpy.core", "numpy._core", 1)  # NumPy 2 renamed the package
        return super().find_class(module, name)


def read_cifar(path: Path, *, label_key: bytes, num_classes: int) -> Part:
    """One CIFAR python batch: data_batch_k / test_batch (CIFAR-10) or train / test (CIFAR-100)."""
    with open(path, "rb") as f:  # outside the try: an unreadable file (permissions) is not a corrupt one
        try:
            # encoding="bytes": the files were pickled by Python 2; keys come back as bytes.
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        except Exception as err:  # whatever the unpickler trips on, the file is not a valid batch
            raise CorruptFileError(path, f"not a readable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise CorruptFileError(path, f"expected a dict with b'data' and {label_key!r}, found {keys}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptFileError(path, f"b'data' must be a uint8 (N, 3072) array, found {desc}")
    labels = _labels(path, batch[label_key], len(data), low=0, high=num_classes - 1)
    images = data.reshape(-1, 3, 32, 32)  # (N, 3072) → (N, C, H, W): R, G, B planes, each row-major
    return Part(images, labels)


# --- SVHN ----------------------------------------------------------------------------------------------


def read_svhn(path: Path) -> Part:
    """train_32x32.mat or test_32x32.mat; label 10 becomes 0 so labels are the digits themselves."""
    from scipy.io import loadmat  # scipy is slow to import and only SVHN needs it

    with open(path, "rb") as f:  # outside the try: an unreadable file (permissions) is not a corrupt one
        try:
            mat = loadmat(f, variable_names=("X", "y"))
        except Exception as err:  # truncated stream (scipy raises OSError), HDF5 (v7.3) file, not a .mat
            why = f"not a readable MATLAB v5 file ({type(err).__name__}: {err})"
            raise CorruptFileError(path, why) from None
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))  # loadmat adds __header__ etc.
        raise CorruptFileError(path, f"expected variables X and y, found {found}")
    x = mat["X"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise CorruptFileError(path, f"X must be a uint8 (32, 32, 3, N) array, found {x.dtype} {x.shape}")
    y = mat["y"]
    if y.ndim != 2 or y.shape[1] != 1:
        raise CorruptFileError(path, f"y must be an (N, 1) array, found shape {y.shape}")
    labels = _labels(path, y[:, 0], x.shape[3], low=1, high=10)
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) → (N, C, H, W)
    return Part(images, labels)


# --- STL-10 --------------------------------------------------------------------------------------------


def read_stl_images(path: Path) -> Part:
    """train_X.bin or test_X.bin."""
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        why = f"{size} bytes is not a whole number of 3×96×96 images ({_STL_IMAGE_BYTES} bytes each)"
        raise CorruptFileError(path, why)
    raw = np.fromfile(path, dtype=np.uint8)
    # Each channel is stored column-major, so a C-order reshape yields (N, C, W, H); swap the last two.
    images = np.ascontiguousarray(raw.reshape(-1, 3, STL_SIZE, STL_SIZE).transpose(0, 1, 3, 2))
    return Part(images=images)


def read_stl_labels(path: Path) -> Part:
    """train_y.bin or test_y.bin: labels 1..10 become 0..9."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise CorruptFileError(path, "empty label file")
    return Part(labels=_labels(path, raw, raw.size, low=1, high=10) - 1)


# --- shared --------------------------------------------------------------------------------------------


def _labels(path: Path, raw: object, count: int, *, low: int, high: int) -> np.ndarray:
    """Validate raw labels (list or array) against the image count and the range [low, high]."""
    try:
        values = np.asarray(raw)
    except Exception as err:
        raise CorruptFileError(path, f"labels are not an array ({err})") from None
    numeric = np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    if values.ndim != 1 or not numeric:
        why = f"labels must be a 1-D array of integers, found {values.dtype} {values.shape}"
        raise CorruptFileError(path, why)
    if len(values) != count:
        raise CorruptFileError(path, f"{count} images but {len(values)} labels")
    labels = values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(labels, values):
        raise CorruptFileError(path, "labels are not whole numbers")
    if labels.size and (labels.min() < low or labels.max() > high):
        bad = labels[(labels < low) | (labels > high)][0]
        raise CorruptFileError(path, f"label {bad} out of range {low}..{high}")
    return labels
