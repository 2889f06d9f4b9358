"""``imagefolder``: the user's own images, one folder per class, read into memory like the official datasets.

    DIR/train/<class>/<image>      DIR/test/<class>/<image>   (DIR/val/<class>/<image> when there is no test/)

or, with ``test_fraction`` (``--test-fraction F``), DIR/train/<class>/<image> alone: about a fraction F of
each class's images is held out as the test split (``hold_out``: a file is held out where a hash of its path
within its class folder falls below F, so the same files in every run and every process, whatever the seed,
and a file added later never moves a training image into the test split).

The classes are the sorted names of the folders in train/ (label i is the i-th); test/ must have the same
ones. Any format Pillow reads is taken by its extension (IMAGE_EXTENSIONS: PNG, JPEG, BMP, GIF, WebP, TIFF,
PNM); other files (a README, .DS_Store) and hidden folders are ignored, and class folders are read
recursively (not through linked folders: ``image_files_in``). Everything is checked before any image is used: a missing split, no classes, a class without
images, train/test classes that differ, an unreadable image (named) are each one `DatasetError` line.

Choices, the same for every folder (so a run is described by its folder and ``image_size`` alone):
- RGB: every image is converted to 3 channels of 8 bits (greyscale repeated, alpha dropped, EXIF rotation
  applied; 16-bit pixels scaled from 0..65535 and floating-point ones from 0..1, where Pillow's own
  conversion would clip them to white). With ``in_channels`` 1 (``--in-channels 1``), grey instead: one
  channel, Pillow's ITU-R 601 luma of that RGB (a third of the memory and of the first layer's arithmetic,
  for scans, X-rays and documents).
- Size: the shorter side is resized to ``image_size`` (default 32, the CIFAR networks' input) and the centre
  square kept, so the aspect ratio is never distorted; bicubic, which Pillow antialiases when shrinking. A
  JPEG is first decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of its size that still covers ``image_size``
  (libjpeg's scaled decoding, Pillow's ``draft``): much faster for photos, and pixels that differ a little from
  a full decode then resize (train, eval and predict all read so).
- Augmentation: CIFAR's, scaled with the size: pad by image_size // 8 (4 at 32) reflected, random crop,
  random horizontal flip. Right for photographs of objects; a dataset whose classes change under a mirror
  (text, digits) should not use it.
- Limits: the split is read class by class, so ``--limit-train N`` / ``--limit-test N`` keep N images taking
  the classes in turn (``first_in_turn``), every class where N allows, not the first class's N.
- Normalisation: ImageNet's mean and std, the usual constants for natural photographs of unknown statistics;
  computing the folder's own would mean decoding every image before the spec is known. Grey: the same
  constants through the luma weights (``GREY_MEAN``, ``GREY_STD``: the mean's weighted sum, and the stds'
  as if the channels moved together).
- Decoding: in ``decode_threads()`` threads where images take long enough to decode (Pillow releases the GIL
  while it decodes and resizes; small images, mostly Python, in one thread: ``THREADS_FROM_S``), in the
  folder's order, with a progress bar on a terminal (a line every 30 s in a log): the same bytes as one by one.

The whole split is held in memory as uint8 (N, C, S, S), like the other datasets: 3 KB per image at S = 32,
so 100,000 images take 300 MB (at S = 224, 15 GB). That suits user datasets of moderate size.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from locallearn.data.errors import CorruptFileError, DatasetError
from locallearn.data.specs import DatasetSpec
from locallearn.progress import Progress

IMAGEFOLDER = "imagefolder"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGE_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, Pillow's convert("L")
GREY_MEAN = (round(sum(w * m for w, m in zip(LUMA, IMAGENET_MEAN)), 4),)  # 0.459
GREY_STD = (round(sum(w * s for w, s in zip(LUMA, IMAGENET_STD)), 4),)  # 0.2256
TEST_SPLITS = ("test", "val")  # the held-out split's folder, in order of preference
IN_FLIGHT = 64  # files decoded ahead of the one yielded, per decoding thread (``decode_images``)
# ``decode_images`` times its first PROBE_FILES files in this thread, and decodes the rest in threads only where
# a file took THREADS_FROM_S or more: a small image's decoding is mostly the Python around it, which holds the
# GIL, so threads only contend for it (on a 2-core Xeon, 28×28 PNGs took 0.13 ms each in one thread and 0.41
# in two; 160×120 JPEGs 0.28 and 0.34; 500×375 JPEGs 1.1 and 0.71; 400×300 PNGs 3.5 and 1.9)
PROBE_FILES = 32
THREADS_FROM_S = 0.0006

Item = tuple[Path, int]  # an image file and its label


@dataclass(frozen=True)
class ImageFolder:
    """What a scan found: the classes and every image file of each split, nothing decoded yet."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[Item, ...]
    test: tuple[Item, ...]
    test_dir: Path  # root/test, or root/val when there is no test/, or root/train with test_fraction
    test_fraction: float | None = None  # the fraction of train/ held out as the test split, if so


def scan_image_folder(root: Path | str | None, test_fraction: float | None = None) -> ImageFolder:
    """List the classes and image files under ``root``, refusing any layout training could not use; with
    ``test_fraction``, the test split is that fraction of each class of train/ (``hold_out``)."""
    if root is None:
        raise DatasetError(f"{IMAGEFOLDER}: no folder given; pass --data-dir DIR ({_layout('DIR')}).")
    root = Path(root)
    train_dir = root / "train"
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{IMAGEFOLDER}: --data-dir {root} {what} ({_layout(root)}).")
    if not train_dir.is_dir():
        if root.name in ("train", *TEST_SPLITS) and (root.parent / "train").is_dir():  # DIR/train given for DIR
            raise DatasetError(f"{IMAGEFOLDER}: --data-dir {root} is a split folder itself; give the folder that "
                               f"holds train/: --data-dir {root.parent}.")
        found = _class_names(root)
        if found and any(_holds_images(root / name) for name in found[:3]):  # the classes are DIR's own folders
            raise DatasetError(
                f"{IMAGEFOLDER}: {root} holds class folders ({', '.join(found[:3])}{', …' if len(found) > 3 else ''}) "
                f"but no train/ folder; move them into {train_dir}/ (and hold out a test split with "
                f"--test-fraction 0.1, or put one in {root}/test/)."
            )
        raise DatasetError(f"{IMAGEFOLDER}: no classes: {train_dir} is not a folder ({_layout(root)}).")
    classes = _class_names(train_dir)
    if not classes:
        raise DatasetError(
            f"{IMAGEFOLDER}: no classes: {train_dir} has no class folders; put each class's images in "
            f"{train_dir}/<class>/."
        )
    if len(classes) < 2:
        raise DatasetError(
            f"{IMAGEFOLDER}: {train_dir} has one class folder ({classes[0]}); a classifier needs at least two."
        )
    test_dir = next((root / name for name in TEST_SPLITS if (root / name).is_dir()), None)
    if test_fraction is not None:
        if test_dir is not None:
            raise DatasetError(
                f"{IMAGEFOLDER}: {root} has its own {test_dir.name}/ folder, which a run with --test-fraction would "
                f"leave unused; train without --test-fraction to test on it, or move it away to hold out part of "
                f"train/."
            )
        train, test = hold_out(_items(train_dir, classes), classes, test_fraction, train_dir)
        return _one_image_one_place(ImageFolder(root, classes, train, test, train_dir, test_fraction))
    if test_dir is None:
        raise DatasetError(
            f"{IMAGEFOLDER}: {root} has no test/ or val/ folder; put held-out images in {root}/test/<class>/ "
            "with the same class folders as train/, or train with --test-fraction 0.1 to hold out part of train/."
        )
    test_classes = _class_names(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        differences = [f"only in train/: {', '.join(only_train)}"] if only_train else []
        differences += [f"only in {test_dir.name}/: {', '.join(only_test)}"] if only_test else []
        raise DatasetError(
            f"{IMAGEFOLDER}: {train_dir} and {test_dir} have different classes ({'; '.join(differences)}); "
            "both need the same class folders."
        )
    return _one_image_one_place(ImageFolder(root, classes, _items(train_dir, classes), _items(test_dir, classes),
                                            test_dir))


def _one_image_one_place(folder: ImageFolder) -> ImageFolder:
    """``folder``, unless a linked file makes one image file both a training and a test image, or an image of
    two classes: the run would be tested on what it trained on, or taught two labels for one image. Linked
    files are read (a folder of links into an image store is a usual way to make a dataset, and two links
    to one file in the same class and split only weigh it twice); the real path of each is compared with
    every other file's."""
    folders: dict[str, tuple[str, set[str]]] = {}  # a folder → its real path and the names of its linked entries
    seen: dict[str, tuple[Path, int, str]] = {}
    for split, items in (("train", folder.train), ("test", folder.test)):
        for path, label in items:
            parent, base = os.path.split(os.fspath(path))
            if parent not in folders:  # one directory read per folder (its entries' types, no stat per file)
                with os.scandir(parent) as entries:
                    folders[parent] = (os.path.realpath(parent), {e.name for e in entries if e.is_symlink()})
            real_parent, links = folders[parent]
            # the folders inside a class folder are not followed links: the parent's real path says where a file is
            real = os.path.realpath(os.path.join(parent, base)) if base in links else os.path.join(real_parent, base)
            other = seen.setdefault(real, (path, label, split))
            if other[1:] != (label, split):
                if folder.test_fraction is not None and other[1] == label:  # two names in one class folder
                    raise DatasetError(
                        f"{IMAGEFOLDER}: {other[0]} and {path} are one image file ({real}, reached through a link) "
                        f"under two names, which --test-fraction's hold-out (by name) puts in both splits; keep one "
                        f"of the names."
                    )
                where = (f"the {other[2]} split's class {folder.classes[other[1]]} and the {split} split's class "
                         f"{folder.classes[label]}")
                raise DatasetError(
                    f"{IMAGEFOLDER}: {other[0]} and {path} are one image file ({real}, reached through a link), in "
                    f"{where}; remove the link, or give it its own copy where it belongs."
                )
    return folder


def image_folder_spec(folder: ImageFolder, image_size: int = DEFAULT_IMAGE_SIZE, channels: int = 3) -> DatasetSpec:
    """The spec of a scanned folder; the choices behind it are in this module's docstring."""
    return classes_spec(folder.classes, image_size, channels, read_from=f"test images from {_test_from(folder)}")


def classes_spec(classes: tuple[str, ...], image_size: int, channels: int = 3,
                 read_from: str | None = None) -> DatasetSpec:
    """The spec of a folder of these classes at this size and channels (3: RGB, 1: grey), the same for every
    folder: what a trained run needs to read new images as its test images were read (``locallearn
    predict``), without its folder."""
    if channels not in (1, 3):
        raise ValueError(f"in_channels: {IMAGEFOLDER} reads its images as RGB (3) or grey (1), got {channels}; give "
                         f"--in-channels 3 or 1.")
    return DatasetSpec(
        IMAGEFOLDER,
        len(classes),
        image_size,
        IMAGENET_MEAN if channels == 3 else GREY_MEAN,
        IMAGENET_STD if channels == 3 else GREY_STD,
        pad=image_size // 8,
        pad_mode="reflect",
        flip=True,
        channels=channels,
        class_names=tuple(classes),
        read_from=read_from,
    )


def hold_out(
    items: tuple[Item, ...], classes: tuple[str, ...], fraction: float, train_dir: Path
) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """(train, test) of the ``items`` of ``train_dir``: a file is the test split's where its place in the hash
    order, ``hash_fraction`` of its path within its class folder, is below ``fraction``.

    Each file's side depends on its own path alone, not on a seed or on the other files: the split is the
    same in every run and process, and a file added to the folder later never moves a training image into
    the test split, so a run evaluated or resumed on a grown folder never tests on an image it trained on.
    A class none of whose files falls below ``fraction`` (likely only for a few images) holds out its file
    of the smallest hash, which a file added later below it may return to training (never the reverse); a
    class all of whose files fall below is refused (keeping one of them for training is what a later file
    could undo, and then the run would be tested on it). Both splits keep the folder's order (classes in
    turn, files sorted)."""
    by_class: dict[int, list[Path]] = {}
    for path, label in items:
        by_class.setdefault(label, []).append(path)
    test: set[Path] = set()
    for label, files in by_class.items():
        name = classes[label]
        if len(files) < 2:
            raise DatasetError(
                f"{IMAGEFOLDER}: class {name} has 1 image; --test-fraction needs at least 2 in every class (one for "
                f"each split); add images to {train_dir / name}."
            )
        ranked = sorted((hash_fraction(p.relative_to(train_dir / name)), p) for p in files)
        held = sum(place < fraction for place, _ in ranked)
        if held == len(files):
            raise DatasetError(
                f"{IMAGEFOLDER}: every image of class {name} ({len(files)}) falls in the held-out {fraction:g}, "
                f"which would leave it none to train on; add images to {train_dir / name} or lower --test-fraction."
            )
        test.update(p for _, p in ranked[:max(held, 1)])
    return (tuple(item for item in items if item[0] not in test),
            tuple(item for item in items if item[0] in test))


def hash_fraction(relative: Path) -> float:
    """A file's place in [0, 1) in the order of the SHA-256 of its path within its class folder (its bytes as
    the file system gives them: a name that is not UTF-8 is hashed too)."""
    digest = hashlib.sha256(os.fsencode(relative.as_posix())).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _test_from(folder: ImageFolder) -> str:
    """Where the test split comes from, naming a held-out folder that is there but not read (val/ beside test/)."""
    if folder.test_fraction is not None:
        total = len(folder.train) + len(folder.test)
        return (f"{folder.test_dir}: {len(folder.test)} of its {total} images, about {folder.test_fraction:g} of "
                f"each class chosen by a hash of their names, held out and not trained on")
    unread = [f"{name}/" for name in TEST_SPLITS
              if (folder.root / name).is_dir() and folder.root / name != folder.test_dir]
    return f"{folder.test_dir}" + (f"; {', '.join(unread)} not read" if unread else "")


def load_image_folder_split(
    folder: ImageFolder, train: bool, image_size: int = DEFAULT_IMAGE_SIZE, limit: int | None = None,
    test_limit: int | None = None, log: Callable[[str], None] | None = None, channels: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the images of the split: uint8 (N, C, S, S), RGB or grey, and int64 labels (N,); with ``limit``, only the
    ``limit`` images ``first_in_turn`` keeps are decoded. Every unreadable image is named in one error — of
    the training split, also those of the test split (the ``test_limit`` it keeps) whose file cannot even be
    opened as an image (found without decoding it), so that one round of fixes clears both. ``log``: where
    the progress line goes when standard error is not a terminal."""
    items = kept_items(folder.train if train else folder.test, limit)
    images = np.empty((len(items), channels, image_size, image_size), dtype=np.uint8)  # (N, C, S, S)
    corrupt: list[CorruptFileError] = []  # every one named at once, not one per run
    what = f"decoding {'training' if train else 'test'} images"
    for i, image in enumerate(decode_images([path for path, _ in items], image_size, channels, what=what, log=log)):
        if isinstance(image, CorruptFileError):
            corrupt.append(image)
        else:
            images[i] = image
    if corrupt and train and folder.test_fraction is None:
        corrupt += [err for err in map(_unopenable, (path for path, _ in kept_items(folder.test, test_limit)))
                    if err is not None]
    if len(corrupt) == 1:
        raise corrupt[0]
    if corrupt:
        shown = ", ".join(str(err.path) for err in corrupt[:5]) + (f", … ({len(corrupt) - 5} more)" if len(corrupt) > 5 else "")
        first = corrupt[0].reason.removesuffix("; replace or remove it")
        raise DatasetError(f"{IMAGEFOLDER}: {len(corrupt)} images are not readable: {shown} (the first: "
                           f"{first}); replace or remove them.")
    labels = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    return torch.from_numpy(images), torch.from_numpy(labels)


def kept_items(items: tuple[Item, ...], limit: int | None) -> tuple[Item, ...]:
    """The items a limit keeps (``first_in_turn``), in the split's order; all of them without one."""
    if limit is None:
        return items
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return tuple(items[i] for i in first_in_turn(labels, limit).tolist())


def _unopenable(path: Path) -> CorruptFileError | None:
    """Why ``path`` cannot be opened as an image (its header read, nothing decoded), or None."""
    from PIL import Image

    try:
        f = _open_image_file(path)
    except CorruptFileError as err:
        return err
    except OSError:
        return None  # not a corrupt image: decoding it says what it is
    with f:
        try:
            Image.open(f).close()
        except Exception as err:
            return CorruptFileError(path, f"not a readable image ({type(err).__name__}); replace or remove it")
    return None


def first_in_turn(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The indices of the ``n`` images that ``limit_train`` / ``limit_test`` keep of a split read class by class:
    the classes taken in turn (each class's first image, then each one's second, ...; a class that runs out
    drops out), so every class is kept where ``n`` allows — the first ``n`` would all be the first class's.
    Returned in the split's order. A limit at least the split's size keeps every image, in the same order."""
    rank = torch.empty_like(labels)  # the position of each image within its class
    for c in labels.unique():
        where = (labels == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    classes = int(labels.max()) + 1 if len(labels) else 1
    turn = torch.argsort(rank * classes + labels)  # turn by turn, classes in order (the keys are distinct)
    return turn[:n].sort().values


def decode_images(
    paths: list[Path], size: int, channels: int = 3, *, what: str = "decoding images",
    log: Callable[[str], None] | None = None, catch: tuple[type[Exception], ...] = (CorruptFileError,),
) -> Iterator[np.ndarray | Exception]:
    """``decode_image`` of each path, in order, decoded ``decode_threads()`` at a time; a file whose error is
    one of ``catch`` (by default: not a readable image) gives that error in its place, any other error is
    raised. ``what`` names the work on the progress bar (or the log's line, every 30 s)."""

    def decode(path: Path) -> np.ndarray | Exception:
        try:
            return decode_image(path, size, channels)
        except catch as err:
            return err

    def one_by_one(some: list[Path]) -> Iterator[np.ndarray | Exception]:
        for path in some:
            yield decode(path)
            progress.update(1)

    threads = decode_threads()
    with Progress(len(paths), what, log=log, unit="image") as progress:
        probe = len(paths) if threads == 1 else min(PROBE_FILES, len(paths))
        began = time.perf_counter()
        yield from one_by_one(paths[:probe])
        rest = paths[probe:]
        if not rest:
            return
        if (time.perf_counter() - began) / probe < THREADS_FROM_S:  # small images: threads would only contend
            yield from one_by_one(rest)
            return
        # A bounded window of files in flight, not one future per file: a folder of millions stays cheap.
        with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
            window = IN_FLIGHT * threads
            for start in range(0, len(rest), window):
                for image in pool.map(decode, rest[start:start + window]):
                    yield image
                    progress.update(1)


def decode_threads() -> int:
    """The threads that decode an image folder: this process's share of the CPU cores it may use (each of
    torchrun's local processes takes an equal share), 1 to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // max(1, ranks)))


def decode_image(path: Path, size: int, channels: int = 3) -> np.ndarray:
    """One image file → uint8 (channels, size, size): RGB (3), or grey (1: Pillow's ITU-R 601 luma of that RGB,
    for a greyscale dataset's run), shorter side resized to ``size``, centre square kept."""
    if channels not in (1, 3):
        raise ValueError(f"decode_image: channels must be 1 (grey) or 3 (RGB), got {channels}.")
    from PIL import Image, ImageOps  # Pillow is imported only when a folder is read

    # outside the try: an unreadable file (permissions, a broken link) is not a corrupt one
    with _open_image_file(path) as f:
        try:
            with Image.open(f) as image:
                # JPEG only: decode at the smallest of 1/1, 1/2, 1/4, 1/8 scale that is still >= size on
                # both sides; a 12-megapixel photo then decodes in a fraction of the time.
                image.draft("RGB", (size, size))
                rgb = _to_rgb(ImageOps.exif_transpose(image), path)
            square = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
        except DatasetError:
            raise
        except Exception as err:  # whatever the decoder trips on (truncated, not an image, too large)
            detail = str(err).replace(f" {f!r}", "")  # Pillow names the file object: the path says it better
            why = f"not a readable image ({type(err).__name__}: {detail}); replace or remove it"
            raise CorruptFileError(path, why) from None
    if channels == 1:
        return np.asarray(square.convert("L"))[None]  # (1, S, S)
    return np.asarray(square).transpose(2, 0, 1)  # (S, S, 3) → (3, S, S)


def _open_image_file(path: Path):
    """``path`` opened for reading in binary; OSError where it cannot be (permissions, a broken link: not a
    corrupt image), CorruptFileError where it is no regular file. Opened without blocking, so that a pipe named
    like an image is refused instead of waiting for a writer forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptFileError(path, "not a regular file (a pipe, a socket or a device); remove it")
    return os.fdopen(fd, "rb")


def _to_rgb(image, path: Path):
    """8-bit RGB. Pillow's ``convert("RGB")`` clips wider pixels to 255 (a 16-bit scan turns white), so
    integer images ("I;16", and "I" as Pillow reads some 16-bit files) are scaled from their 16-bit range
    0..65535 and float images ("F") from 0..1; values outside those ranges are refused, not guessed at."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else 65535.0
        if pixels.size and (pixels.min() < 0 or pixels.max() > top):
            kind = "floating-point pixels outside 0..1" if image.mode == "F" else "pixel values outside 0..65535"
            raise DatasetError(f"{IMAGEFOLDER}: {path} has {kind} (Pillow mode {image.mode}), which have no 8-bit "
                               "equivalent; save it as an 8- or 16-bit image.")
        image = Image.fromarray(np.rint(pixels * (255.0 / top)).astype(np.uint8), "L")
    return image.convert("RGB")


def _class_names(split_dir: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


def _items(split_dir: Path, classes: tuple[str, ...]) -> tuple[Item, ...]:
    """Every image file of the split with its label; classes in order, files sorted within a class."""
    items: list[Item] = []
    for label, name in enumerate(classes):
        files = image_files_in(split_dir / name)
        if not files:
            raise DatasetError(
                f"{IMAGEFOLDER}: class folder {split_dir / name} holds no images "
                f"(read by extension: {', '.join(IMAGE_EXTENSIONS)})."
            )
        items += [(path, label) for path in files]
    return tuple(items)


def _holds_images(folder: Path) -> bool:
    """Whether image files lie directly in ``folder`` (a class folder; a split folder such as Training/ holds
    class folders instead)."""
    return any(is_image_name(p.name) and p.is_file() for p in folder.iterdir())


def is_image_name(name: str) -> bool:
    """A file the folder reader takes: not hidden, and an IMAGE_EXTENSIONS extension in any case."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_files_in(class_dir: Path, follow_links: bool = False) -> list[Path]:
    """Every image file under ``class_dir``, recursively, hidden files and folders left out, sorted by their path
    in ``class_dir``. Linked folders inside it are not followed — a training folder's files are known by their
    path, which the held-out split hashes, and a link could give one image two paths, two classes or both
    splits — unless ``follow_links`` (files to classify: each real folder once, a link back up would loop).
    Linked files are listed; ``scan_image_folder`` refuses one that puts an image in two classes or splits."""
    found = []
    seen = {os.path.realpath(class_dir)}
    for directory, subdirs, names in os.walk(class_dir, followlinks=follow_links):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]  # .ipynb_checkpoints and the like
        if follow_links:  # real folders first, then links by name: a folder reached twice is read once
            kept = []
            for d in sorted(subdirs, key=lambda d: (os.path.islink(os.path.join(directory, d)), d)):
                real = os.path.realpath(os.path.join(directory, d))
                if real not in seen:
                    seen.add(real)
                    kept.append(d)
            subdirs[:] = kept
        found += [Path(directory, n) for n in names if is_image_name(n)]
    return sorted(found, key=lambda p: p.relative_to(class_dir).as_posix())


def _layout(root: Path | str) -> str:
    return f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/)"
