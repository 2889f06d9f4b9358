"""Readers for the official file formats, one function per format. Each reads one file, checks that it
holds what the format promises (shape, dtype, label range) and returns a `Part` in our layout: images
uint8 (N, C, H, W), labels int64 (N,) in 0..C-1. Any failure raises `CorruptFileError` naming the file.

Every reader takes ``max_count``, the official number of images of the file, and checks the size the file
declares (its length, or the dimensions in its header) against it *before* decoding anything: a small or
sparse file that claims millions of images is refused without allocating them.

Layouts (from the datasets' own documentation):
- CIFAR-10/100 python: a pickled dict per file; b"data" is (N, 3072) uint8, each row R, G, B planes of a
  row-major 32×32 image; labels are b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100).
- SVHN cropped digits: a MATLAB v5 file with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10, where 10 is
  the digit 0.
- STL-10 binary: *_X.bin is raw uint8, N × 3 × 96 × 96, each channel stored column-major (MATLAB order);
  *_y.bin is one uint8 label per image in 1..10.
- IDX (MNIST, Fashion-MNIST; http://yann.lecun.com/exdb/mnist/), usually gzipped: a big-endian header, the
  magic number 0x00000803 (unsigned bytes, 3 dimensions) or 0x00000801 (1 dimension) followed by one uint32
  per dimension, then the data in C order: N × 28 × 28 pixels row by row, or N labels 0..9.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from locallearn.data.errors import CorruptFileError

STL_SIZE = 96
_STL_IMAGE_BYTES = 3 * STL_SIZE * STL_SIZE  # 27,648


@dataclass(frozen=True)
class Part:
    """What one file contributes to a split: images, labels, or both."""

    images: np.ndarray | None = None  # uint8 (N, C, H, W)
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


# A pickle declares no sizes, but unpickling allocates about as much as the file holds, so the file's length
# is what is bounded. An official batch holds 3,072 pixel bytes per image and about 32 bytes of label and
# file name; a protocol-2 pickle written by Python 3 stores the pixel bytes as UTF-8 text, up to twice as
# long. A file longer than this per official image cannot be a batch of the official size.
_CIFAR_MAX_BYTES_PER_IMAGE = 2 * 3072 + 1024


def read_cifar(path: Path, *, max_count: int, label_key: bytes, num_classes: int) -> Part:
    """One CIFAR python batch: data_batch_k / test_batch (CIFAR-10) or train / test (CIFAR-100)."""
    size, limit = path.stat().st_size, max_count * _CIFAR_MAX_BYTES_PER_IMAGE
    if size > limit:
        why = f"{size} bytes, more than a batch of the official {max_count} images takes (at most {limit})"
        raise CorruptFileError(path, why)
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
    if len(data) > max_count:
        raise CorruptFileError(path, f"{len(data)} images, more than the official {max_count}")
    labels = _labels(path, batch[label_key], len(data), low=0, high=num_classes - 1)
    images = data.reshape(-1, 3, 32, 32)  # (N, 3072) → (N, C, H, W): R, G, B planes, each row-major
    return Part(images, labels)


def read_cifar_names(path: Path, *, key: bytes, count: int) -> tuple[str, ...] | None:
    """The class names a CIFAR ``meta`` / ``batches.meta`` file lists under ``key`` (CIFAR-100's
    ``fine_label_names``), or None where the file is missing or does not hold ``count`` of them: names only
    label the results, so a damaged file leaves the label numbers, not a refused run."""
    try:
        if path.stat().st_size > 64 * 1024:  # the official meta file is under 2 KB
            return None
        with open(path, "rb") as f:
            meta = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception:
        return None
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, (bytes, str)) for n in names):
        return None
    try:
        names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        return None
    return tuple(names) if len(set(names)) == count and all(names) else None


# --- SVHN ----------------------------------------------------------------------------------------------


def read_svhn(path: Path, *, max_count: int) -> Part:
    """train_32x32.mat or test_32x32.mat; label 10 becomes 0 so labels are the digits themselves.

    The variables' dimensions are read from their headers (``whosmat``) and checked before ``loadmat``
    decompresses anything: a 1 MB file can hold a zlib stream that inflates to gigabytes.
    """
    from scipy.io import loadmat, whosmat  # scipy is slow to import and only SVHN needs it

    def unreadable(err: Exception) -> CorruptFileError:
        # Truncated stream (scipy raises OSError), HDF5 (v7.3) file, not a .mat at all.
        return CorruptFileError(path, f"not a readable MATLAB v5 file ({type(err).__name__}: {err})")

    with open(path, "rb") as f:  # outside the try: an unreadable file (permissions) is not a corrupt one
        try:
            declared = {name: (shape, kind) for name, shape, kind in whosmat(f)}
        except Exception as err:
            raise unreadable(err) from None
        _check_svhn_header(path, declared, max_count)
        f.seek(0)
        try:
            mat = loadmat(f, variable_names=("X", "y"))
        except Exception as err:
            raise unreadable(err) from None
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


def _check_svhn_header(path: Path, declared: dict[str, tuple[tuple[int, ...], str]], max_count: int) -> None:
    """X (32, 32, 3, N) uint8 with N <= max_count and y (N, 1), from the dimensions the file declares. A
    variable not listed is left to the check after loading: a truncated file lists only what precedes the
    cut, and loadmat then says it is truncated."""
    if "X" not in declared:
        return  # loadmat reads only X and y: without X nothing large is decoded
    x_shape, x_kind = declared["X"]
    if x_kind != "uint8" or len(x_shape) != 4 or tuple(x_shape[:3]) != (32, 32, 3):
        raise CorruptFileError(path, f"X must be a uint8 (32, 32, 3, N) array, found {x_kind} {tuple(x_shape)}")
    n = x_shape[3]
    if n > max_count:
        raise CorruptFileError(path, f"X declares {n} images, more than the official {max_count}")
    if "y" not in declared:
        return
    y_shape = declared["y"][0]
    if len(y_shape) != 2 or y_shape[1] != 1:
        raise CorruptFileError(path, f"y must be an (N, 1) array, found shape {tuple(y_shape)}")
    if y_shape[0] != n:
        raise CorruptFileError(path, f"{n} images but {y_shape[0]} labels")


# --- STL-10 --------------------------------------------------------------------------------------------


def read_stl_images(path: Path, *, max_count: int) -> Part:
    """train_X.bin or test_X.bin; its length, checked before reading, says how many images it holds."""
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        why = f"{size} bytes is not a whole number of 3×96×96 images ({_STL_IMAGE_BYTES} bytes each)"
        raise CorruptFileError(path, why)
    if size // _STL_IMAGE_BYTES > max_count:
        why = f"{size} bytes is {size // _STL_IMAGE_BYTES} images, more than the official {max_count}"
        raise CorruptFileError(path, why)
    raw = np.fromfile(path, dtype=np.uint8)
    # Each channel is stored column-major, so a C-order reshape yields (N, C, W, H); swap the last two.
    images = np.ascontiguousarray(raw.reshape(-1, 3, STL_SIZE, STL_SIZE).transpose(0, 1, 3, 2))
    return Part(images=images)


def read_stl_labels(path: Path, *, max_count: int) -> Part:
    """train_y.bin or test_y.bin: labels 1..10 become 0..9."""
    size = path.stat().st_size
    if size > max_count:
        raise CorruptFileError(path, f"{size} labels (one byte each), more than the official {max_count}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise CorruptFileError(path, "empty label file")
    return Part(labels=_labels(path, raw, raw.size, low=1, high=10) - 1)


# --- IDX (Fashion-MNIST) -------------------------------------------------------------------------------

IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions: (N, rows, columns)
IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension: (N,)
_IDX_KINDS = {IDX_IMAGES: "an IDX image file", IDX_LABELS: "an IDX label file"}
MNIST_SIZE = 28
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20


def read_idx_images(path: Path, *, max_count: int, size: int = MNIST_SIZE) -> Part:
    """An IDX image file, gzipped or plain (told apart by its first bytes, not its name): (N, 1, S, S)."""
    pixels = _read_idx(path, magic=IDX_IMAGES, item_shape=(size, size), max_count=max_count, kind="images")
    return Part(images=pixels.reshape(-1, 1, size, size))  # (N·S·S,) → (N, 1, S, S): rows, then columns


def read_idx_labels(path: Path, *, max_count: int, num_classes: int = 10) -> Part:
    """An IDX label file, gzipped or plain: labels 0..num_classes-1."""
    raw = _read_idx(path, magic=IDX_LABELS, item_shape=(), max_count=max_count, kind="labels")
    return Part(labels=_labels(path, raw, raw.size, low=0, high=num_classes - 1))


def _read_idx(path: Path, *, magic: int, item_shape: tuple[int, ...], max_count: int, kind: str) -> np.ndarray:
    """The flat uint8 data of an IDX file, after checking its header against ``item_shape`` and
    ``max_count``: the data are allocated only once the declared size is known to be the official one."""
    with open(path, "rb") as raw:  # outside the try: an unreadable file (permissions) is not a corrupt one
        gzipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        try:
            header = stream.read(4)  # buffered reads return short only at the end of the stream
            found = int.from_bytes(header, "big") if len(header) == 4 else None
            if found != magic:
                what = "a truncated header" if found is None else f"magic number 0x{found:08x}"
                if found in _IDX_KINDS:
                    what += f" ({_IDX_KINDS[found]})"
                raise CorruptFileError(path, f"{what}, expected 0x{magic:08x} ({_IDX_KINDS[magic]})")
            ndim = 1 + len(item_shape)
            dims_bytes = stream.read(4 * ndim)
            if len(dims_bytes) != 4 * ndim:
                raise CorruptFileError(path, "truncated header")
            count, *shape = np.frombuffer(dims_bytes, dtype=">u4").tolist()
            if tuple(shape) != item_shape:
                declared, official = "×".join(map(str, shape)), "×".join(map(str, item_shape))
                raise CorruptFileError(path, f"declares {declared} {kind}, expected {official}")
            if count > max_count:
                raise CorruptFileError(path, f"declares {count} {kind}, more than the official {max_count}")
            data = np.empty(count * int(np.prod(item_shape, dtype=np.int64)), dtype=np.uint8)
            got = _read_into(stream, data)
            if got < data.size:
                raise CorruptFileError(path, f"truncated: {got} of the {data.size} data bytes it declares")
            if stream.read(1):  # for gzip this also reaches the end of the stream, where the CRC is checked
                raise CorruptFileError(path, f"trailing data after the {count} {kind} it declares")
        except (OSError, EOFError, zlib.error) as err:  # gzip: bad header, CRC, or stream cut short
            what = "gzip stream" if gzipped else "file"
            raise CorruptFileError(path, f"not a readable {what} ({type(err).__name__}: {err})") from None
    return data


def _read_into(stream: BinaryIO, out: np.ndarray) -> int:
    """Fill the uint8 array ``out`` from ``stream``; returns the bytes read, fewer than ``out.size`` only when
    the stream ends first. In pieces of 1 MiB: GzipFile.readinto reads into a temporary of the requested size
    before copying, which for the whole array would double the memory."""
    view, got = memoryview(out), 0
    while got < len(view) and (n := stream.readinto(view[got : got + _READ_CHUNK])):
        got += n
    return got


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
