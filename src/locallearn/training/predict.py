"""What a trained run says of new images: ``locallearn predict RUN IMAGE_OR_FOLDER...`` and ``predict`` from
Python. Each image file is read as the run's test images were read — an image folder's way (RGB, shorter
side resized to the run's size, centre square; data/imagefolder.py), grey for a greyscale dataset's run —
normalised with the run's statistics, and passed through the inference forward (auxiliary heads unused);
the answer is the most probable classes with their softmax probabilities.

A run on batches from Python has no preprocessing locallearn knows: read it back with ``load_net`` and apply
your own. An image folder's run needs no folder: config.yaml and the checkpoint record its classes and size.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from locallearn.data import get_spec
from locallearn.data.errors import DatasetError
from locallearn.data.imagefolder import IMAGEFOLDER, classes_spec, decode_images, image_files_in, is_image_name
from locallearn.data.loader import BatchLoader
from locallearn.data.specs import DatasetSpec
from locallearn.training.api import trained_net
from locallearn.training.config import PYTHON_DATA, Config, read_run_options, resolve
from locallearn.training.rundir import CONFIG, WRITTEN_BY_TRAIN, RunDir
from locallearn.training.runner import Log, run_spec

BATCH = 256  # images classified at a time


@dataclass(frozen=True)
class Prediction:
    """One file: its ``top`` classes, most probable first (names, label numbers, probabilities), or the reason
    it could not be read (``error``; then the tuples are empty)."""

    file: Path
    classes: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    probabilities: tuple[float, ...] = ()
    error: str | None = None


def predict(
    run_dir: str | Path, paths: Iterable[str | Path], *, top: int = 1, device: str = "auto",
    model: nn.Module | None = None, log: Log | None = None,
) -> Iterator[Prediction]:
    """The run's ``top`` classes for each image file of ``paths`` (a folder: every image file under it, by
    extension, sorted), in that order, ``BATCH`` files at a time; an unreadable file is yielded with its
    ``error``, not skipped. ``model``: the model object of a run trained on a Python object."""
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top: expected a number of classes >= 1, got {top!r}.")
    run = RunDir(Path(run_dir))
    if not run.file(CONFIG).is_file():
        raise ValueError(run.no_config("predict: ", otherwise=WRITTEN_BY_TRAIN) + ".")
    files = image_files(paths)  # every path checked before the network is read
    config = resolve(read_run_options(run.file(CONFIG)), read_folder=False, device=device)
    if config.data.dataset == PYTHON_DATA:
        raise ValueError(f"predict: {run.path} was trained on batches given from Python, whose preprocessing (size, "
                         f"normalisation) locallearn does not know; read it back with load_net({str(run.path)!r}) "
                         f"and apply your own.")
    net, _ = trained_net(run, config, model=model, reader="predict")
    spec = input_spec(config, net.class_names)
    top = min(top, len(net.class_names))
    on = next(net.parameters()).device
    amp = torch.autocast(on.type, dtype=config.autocast_dtype) if config.autocast_dtype else contextlib.nullcontext()
    decoded = decode_images(files, spec.image_size, spec.channels, what="prediction", log=log,
                            catch=(DatasetError, OSError))  # an unreadable file is answered, not raised
    for start in range(0, len(files), BATCH):
        chunk = list(zip(files[start:start + BATCH], itertools.islice(decoded, BATCH)))
        images = [image for _, image in chunk if not isinstance(image, Exception)]
        best = zip(*_probabilities(net, spec, images, on, amp).topk(top, dim=1)) if images else iter(())
        for path, image in chunk:  # in the order given; the decoded ones in order among them
            if isinstance(image, Exception):
                yield Prediction(path, error=_reason(image, path))
                continue
            p, labels = next(best)
            chosen = tuple(int(c) for c in labels)
            yield Prediction(path, tuple(net.class_names[c] for c in chosen), chosen, tuple(float(v) for v in p))


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to classify: each file as given, and every image file under each folder (by extension, hidden
    files and folders left out), sorted; a path that does not exist, or a folder without images, is refused."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = image_files_in(path, follow_links=True)
            if not found:
                raise ValueError(f"predict: {path} holds no image files (read by extension: .png, .jpg, ...); "
                                 f"give image files or a folder of them.")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise ValueError(f"predict: {path} does not exist; give image files or folders of them.")
    if not files:
        raise ValueError("predict: no images given; give image files or folders of them.")
    return files


def labelled_images(folder: Path, class_names: list[str], spec: DatasetSpec, *, log: Log | None = None,
                    ) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """The image files of ``folder``'s class folders (FOLDER/<class>/<image>, read recursively as ``predict``
    reads a folder), each labelled with the run's class its folder names — what ``eval --images`` scores a run
    on — decoded as ``spec`` says: (files, uint8 images (N, C, S, S), int64 labels). The run's classes without a
    folder are simply not tested; a folder that names no class of the run, one without images, and unreadable
    images (all named at once) are refused in one line."""
    if not folder.is_dir():
        raise ValueError(f"eval: --images {folder} is not a folder; give a folder of class folders "
                         f"(FOLDER/<class>/<image>).")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
    if loose:  # an image outside any class folder has no label: said, not left out of the count
        raise ValueError(f"eval: --images {folder} holds image files outside class folders ({', '.join(loose[:3])}"
                         f"{', …' if len(loose) > 3 else ''}); move each into the folder of its class "
                         f"({folder}/<class>/).")
    unknown = [name for name in names if name not in class_names]
    if unknown or not names:
        shown = ", ".join(class_names[:8]) + (", …" if len(class_names) > 8 else "")
        what = (f"its folder{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:5])} name{'' if len(unknown) > 1 else 's'} "
                f"no class of the run" if unknown else "it holds no class folders")
        split = [name for name in unknown if name in ("train", "test", "val")]
        hint = f" (give {folder / split[0]} itself)" if split else ""
        raise ValueError(f"eval: --images {folder}: {what}{hint}; its folders must be named by the run's classes "
                         f"({shown}).")
    files: list[Path] = []
    labels: list[int] = []
    for name in names:
        found = image_files_in(folder / name, follow_links=True)
        if not found:
            raise ValueError(f"eval: --images: {folder / name} holds no image files (read by extension: .png, .jpg, "
                             f"...); remove it, or put the class's images in it.")
        files += found
        labels += [class_names.index(name)] * len(found)
    images = np.empty((len(files), spec.channels, spec.image_size, spec.image_size), dtype=np.uint8)
    unread = []
    decoded = decode_images(files, spec.image_size, spec.channels, what="decoding images", log=log,
                            catch=(DatasetError, OSError))
    for i, (path, image) in enumerate(zip(files, decoded)):
        if isinstance(image, Exception):
            unread.append(f"{path} ({_reason(image, path)})")
        else:
            images[i] = image
    if unread:
        more = f", … ({len(unread) - 3} more)" if len(unread) > 3 else ""
        one = len(unread) == 1
        raise ValueError(f"eval: --images: {len(unread)} file{'' if one else 's'} could not be read: "
                         f"{', '.join(unread[:3])}{more}; replace or remove {'it' if one else 'them'}.")
    return files, torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def input_spec(config: Config, class_names: list[str]) -> DatasetSpec:
    """How the run's test images were made from pixels: size, channels and normalisation (the run's own
    image_mean / image_std, as its test loader used them: ``runner.load_data``)."""
    if config.data.dataset == IMAGEFOLDER:
        spec = classes_spec(tuple(class_names), config.net.image_size, config.net.in_channels)
    else:
        spec = get_spec(config.data.dataset)
    return run_spec(config, spec)


def _probabilities(net: nn.Module, spec: DatasetSpec, images: list[np.ndarray], device: torch.device,
                   amp: contextlib.AbstractContextManager) -> torch.Tensor:
    """Softmax probabilities (B, C) of decoded uint8 images, normalised as the run's test loader does."""
    batch = torch.from_numpy(np.stack(images))  # (B, C, S, S) uint8
    loader = BatchLoader(batch, torch.zeros(len(batch), dtype=torch.int64), spec=spec, batch_size=len(batch),
                         train=False, seed=0, prefetch=0, device=device)
    (x, _), = loader
    with torch.no_grad(), amp:
        logits = net(x)
    return logits.float().softmax(dim=1).cpu()


def _reason(err: Exception, path: Path) -> str:
    """Why ``path`` was not read, without the file's name (the line names it) or the image folder's fix (a
    file to classify is not a dataset to repair)."""
    text = " ".join(str(err).split())
    for prefix in (f"{path} is corrupt: ", f"{IMAGEFOLDER}: {path} "):
        text = text.removeprefix(prefix)
    for fix in ("; replace or remove it", "; remove it"):
        text = text.removesuffix(fix)
    return text
