"""Training from Python on your own data: ``train`` takes any iterables of ``(images, labels)`` batches — a
``torch.utils.data.DataLoader``, a list — and writes the same run directory as ``locallearn train``;
``load_net`` rebuilds a run's network with its weights.

    from locallearn.training import train, load_net
    summary = train(my_model, train_loader, test_loader, out="runs/mine", method="contsup", num_modules=4,
                    num_classes=10, epochs=30, lr=0.1)
    net = load_net("runs/mine", model=my_model)

The batches are used as they come: normalise and augment them in your loader (the run records the dataset
as ``iterable``). They must be iterable more than once (an epoch each); their first batch gives the input's
channels and size (an ``in_channels`` / ``image_size`` given must match it) and the batch size the run records;
``num_classes`` is required; the data options of the command line (dataset, data_dir, limit_train,
limit_test, test_fraction) are refused. Resume with the same data and ``resume=True``; the order of a DataLoader's batches is
its own (seed its generator for repeatable runs). A model object is trained in place, from the weights it
holds: ``seed`` does not initialise it (seed torch before building it), and passing it to another ``train``
starts from the first run's weights (said in a warning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from locallearn.engine import NonFiniteLossError, check_tensors, label_error
from locallearn.net import LocalNet, build_net
from locallearn.training.config import (
    PYTHON_DATA,
    RESUMABLE_CHANGES,
    Config,
    check_used,
    differing_options,
    read_run_options,
    resolve,
)
from locallearn.training.fit import fit, nothing_to_resume, written_config
from locallearn.training.rundir import CHECKPOINT, CONFIG, METRICS, PREVIOUS, SUMMARY, RunDir, load_state
from locallearn.training.classes import class_labels
from locallearn.training.runner import (
    READ_FIX,
    SingleProcess,
    load_weights,
    net_to_build,
    pipeline_resume,
    resolve_device,
    resume_command,
    to_channels_last,
)


def train(
    model: str | nn.Module,
    train_data: Iterable,
    test_data: Iterable,
    *,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train ``model`` (a registered name, a factory's import path, or your own ``Backbone`` /
    ``nn.Sequential``) on batches from Python into the run directory ``out``; returns the summary.
    ``class_names``: the name of label 0, 1, ... (recorded with the run, as an image folder's are, and checked
    on a resume). ``options``: any option of ``locallearn train`` (method, num_modules, epochs, lr, ...)."""
    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise ValueError(f"out: expected the run directory, a path, got {out!r}.")
    if not callable(log):
        raise ValueError(f"log: expected a function taking a line (print, logging.info, ...), got {log!r}.")
    if "num_classes" not in options:
        raise ValueError("num_classes: batches given from Python need num_classes=... (it is not read from the labels).")
    for name in _DATA_OPTIONS:
        if options.get(name) is not None:
            raise ValueError(f"{name}: batches given from Python are used as they come, so {name}=... would change "
                             "nothing but config.yaml; drop it, and choose or limit the data in your loader.")
    for what, data in (("training data", train_data), ("test data", test_data)):
        try:
            once = iter(data) is data  # an iterator: one pass, and peeking at its first batch would lose that batch
        except TypeError:
            raise ValueError(f"{what}: expected an iterable of (images, labels) batches, e.g. a DataLoader.") from None
        if once:
            raise ValueError(f"{what}: an iterator or a generator can be iterated only once, and training "
                             "goes over the data once per epoch; give a DataLoader or a list of batches.")
    amp = options.get("amp") not in (None, "none")  # under autocast, half-precision images are taken as they are
    images, labels = first_batch(train_data, "training data", model, amp=amp)
    test_images, test_labels = first_batch(test_data, "test data", model, amp=amp)
    if test_images.shape[1:] != images.shape[1:]:
        raise ValueError(f"test data: images of shape {tuple(test_images.shape[1:])}, the training data's "
                         f"{tuple(images.shape[1:])}; give both at the channels and size the network takes.")
    for where, batch_labels in (("training batch 1", labels), ("test batch 1", test_labels)):
        error = label_error(batch_labels, options["num_classes"], where) if isinstance(options["num_classes"], int) else None
        if error is not None:  # refused before an --overwrite clears the old run
            raise error
    for name, size in (("in_channels", int(images.shape[1])), ("image_size", int(images.shape[-1]))):
        if options.get(name) is None:
            options[name] = size
        if options[name] != size:  # the network would be sized (and split) for other images
            raise ValueError(f"{name}: the first training batch's images have {name}={size}, not {options[name]}; "
                             f"drop {name}=, or give images of that shape.")
    if options.get("batch_size") is None:  # what the run records and says: the loader's
        options["batch_size"] = int(images.shape[0])
    if options["batch_size"] != images.shape[0]:
        raise ValueError(f"batch_size: batches given from Python come at their own size ({images.shape[0]} in the "
                         f"first), not batch_size={options['batch_size']}; drop batch_size=, or batch your data so.")
    requested = {**options, "model": model, "dataset": PYTHON_DATA, "out": str(out)}
    config = resolve(requested)
    low, high = float(images.min()), float(images.max())
    if config.net.reconstruct and config.net.num_modules > 1 and config.net.image_mean is None and (low < 0 or high > 1):
        raise ValueError(f"image_mean: the local losses reconstruct the image in [0, 1] from the batches, but the "
                         f"first training batch holds values in [{low:.3g}, {high:.3g}] (normalised by your loader?); "
                         f"pass image_mean=... and image_std=... of that normalisation, so that the target is the "
                         f"image before it.")
    if not resume:  # a resume keeps the options the run was started with
        check_used(config, options, python=True)
    given = model if isinstance(model, nn.Module) else None
    earlier = getattr(given, _TRAINED_BY, None)
    if earlier is not None and not resume:
        log(f"warning: this model object was trained by an earlier train() into {earlier}: this run starts from "
            "those weights, not from a fresh initialisation (seed does not initialise an object you built); build "
            "a new model for each run.")
    note = nothing_to_resume(out) if resume else None
    if note:  # a mistyped out=
        log(note)
    launcher = SingleProcess(data=(train_data, test_data), model=given,
                             class_names=checked_class_names(class_names, config.net.num_classes))
    # a resume compares what was asked with the stored run (an option not given keeps its stored value, e.g. a
    # default changed since), as `locallearn train --resume` does
    try:
        summary = fit(config, resume=resume, overwrite=overwrite, log=log, launcher=launcher, requested=requested)
    except NonFiniteLossError as err:
        if given is None:
            raise
        raise NonFiniteLossError(f"{err} The model object given was trained in place and holds the diverged "
                                 f"weights; build it again (or load_net(out) for the last checkpoint's).") from None
    if given is not None:
        setattr(given, _TRAINED_BY, str(out))
    return summary


# What batches given from Python make meaningless: the data is the batches, as they come.
_DATA_OPTIONS = ("dataset", "data_dir", "limit_train", "limit_test", "test_fraction")
# The attribute that marks a model object train() has trained (its weights are then that run's).
_TRAINED_BY = "_locallearn_trained_into"


def checked_class_names(names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """``train(class_names=...)``: one distinct string per class, refused in one line otherwise."""
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names: expected a list of names, one per label, got {names!r}.")
    names = list(names)
    if len(names) != num_classes or len(set(names)) != len(names):
        what = "repeats a name" if len(set(names)) != len(names) else f"has {len(names)} names"
        raise ValueError(f"class_names: {what}, but the run has {num_classes} classes; give one distinct name per "
                         f"label 0..{num_classes - 1}.")
    return names


def first_batch(data: Iterable, what: str, model: str | nn.Module, *, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first (images, labels) batch of ``data``, checked as ``train_step`` checks a batch
    (``engine.check_tensors``: images of the model's dtype, float32 unless the model object is in another, or
    float16 / bfloat16 with ``amp``; int64 or uint8 labels, one each), and square, the size the network is built
    for."""
    try:
        batch = next(iter(data))
    except StopIteration:
        raise ValueError(f"{what}: it holds no batch; give at least one (images, labels) batch.") from None
    if isinstance(batch, dict):
        raise ValueError(f"{what}: batches must be (images, labels) pairs, got a dict with keys "
                         f"{', '.join(map(str, batch))}; e.g. a collate_fn returning (batch['image'], batch['label']).")
    if isinstance(batch, (tuple, list)) and len(batch) != 2:
        kinds = ", ".join(type(part).__name__ for part in batch[:4]) + (", …" if len(batch) > 4 else "")
        raise ValueError(f"{what}: batches must be (images, labels) pairs, got batches of {len(batch)} ({kinds}); "
                         f"e.g. a collate_fn that returns (images, labels) alone.")
    try:
        images, labels = batch
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an iterable of (images, labels) batches, e.g. a DataLoader.") from None
    single = isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.DataLoader)
    if single and getattr(images, "dim", lambda: 0)() == 3:  # a Dataset's items are single images
        raise ValueError(f"{what}: a Dataset gives one image at a time (the first of shape {tuple(images.shape)}), "
                         f"not batches; wrap it in a DataLoader, e.g. DataLoader(data, batch_size=64, shuffle=True).")
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    check_tensors(images, labels, dtype=dtype, autocast=amp, where=f"{what}: ")  # what train_step checks too
    if images.shape[-1] != images.shape[-2]:  # the network is built for image_size × image_size
        raise ValueError(f"{what}: images must be square, (batch, channels, size, size), got shape "
                         f"{tuple(images.shape)}; crop or resize them in your loader.")
    return images, labels


def trained_checkpoint(run: RunDir, config: Config, map_location: str | torch.device = "cpu", *,
                       reader: str = "load_net") -> dict[str, Any]:
    """The state of ``run``'s checkpoint.pt, for ``reader`` (``eval``, ``load_net``) to read the trained network
    back: sound, and written with the options ``config`` (the run's config.yaml) gives, but where the run lives
    and runs; otherwise refused in one line saying what is left and how to go on."""
    again = resume_command(run, python=config.data.dataset == PYTHON_DATA)  # what continues the run
    try:
        checkpoint = run.load_checkpoint(map_location)
    except ValueError as err:  # damaged: a resume retrains its epoch from the one before, where that is sound
        if not run.file(PREVIOUS).is_file():
            raise
        try:
            load_state(run.file(PREVIOUS))
        except ValueError as second:
            raise ValueError(f"{run.path}: {CHECKPOINT} and {PREVIOUS} are both damaged ({second}); no sound "
                             f"checkpoint is left, so the weights are lost (metrics.jsonl and summary.json still "
                             f"hold the results).") from None
        raise ValueError(f"{str(err).rstrip('.')}; `{again}` trains that epoch "
                         f"again from it, then {reader} works.") from None
    if checkpoint is None and run.file(PREVIOUS).is_file():
        raise ValueError(f"{run.path} has no {CHECKPOINT} (a write was interrupted), only {PREVIOUS}, of the epoch "
                         f"before; `{again}` continues the run from it.")
    if checkpoint is None and run.has_checkpoint(stages=True):
        command, unknown = pipeline_resume(run)
        raise ValueError(f"{run.path} has no {CHECKPOINT}, only the stage files of the pipeline that trained it; "
                         f"`{command}`{unknown} writes it from them, then {reader} works.")
    if checkpoint is None:
        try:
            logged = run.read_metrics()
        except ValueError:  # damaged too: what is missing here is the checkpoint
            logged = []
        if run.results():  # epochs that were checkpointed once (a resume refuses such a run): the files were removed
            kept = " and ".join(name for name in (METRICS, SUMMARY) if run.file(name).is_file())
            raise ValueError(f"{run.path} has neither {CHECKPOINT} nor {PREVIOUS} though it trained "
                             f"{f'{len(logged)} epoch' + ('s' if len(logged) != 1 else '') if logged else 'its epochs'}: its weights were removed, so {reader} has no network to read (its results stay "
                             f"in {kept}, which `locallearn report` reads); to evaluate it, train it again into "
                             f"another --out.")
        raise ValueError(f"{run.path} has no checkpoint.pt yet: no epoch of this run has been checkpointed"
                         + (f" (metrics.jsonl logs epoch {logged[-1]['epoch']}, which a stop cut off before its "
                            f"checkpoint; `{again}` trains it again)" if logged else "") + ".")
    written = written_config(checkpoint, run.file(CHECKPOINT), data_dir=config.data.data_dir)
    differing = differing_options(written, config, ignore=RESUMABLE_CHANGES) if written is not None else []
    if differing:  # an edited config.yaml would rebuild another network, or test other data
        raise ValueError(f"{reader}: {run.file(CHECKPOINT)} was written with other options than {run.file(CONFIG)} says: "
                         f"{', '.join(differing)}; restore the run's own {CONFIG}.")
    return checkpoint


def load_net(run_dir: str | Path, *, model: nn.Module | None = None, map_location: str = "cpu") -> LocalNet:
    """The network of a run with the weights of its checkpoint.pt, in eval mode, on ``map_location`` (a device:
    cpu, cuda, cuda:N, auto). ``model``: the model object the run was trained with, when it was given as a
    Python object (its name cannot rebuild it). An image folder's run needs no folder: config.yaml records its
    classes and size. ``net.class_names``: the name of each class the run recorded (else the label numbers)."""
    run = RunDir(Path(run_dir))
    if not run.file(CONFIG).is_file():
        raise ValueError(run.no_config() + ".")
    config = resolve(read_run_options(run.file(CONFIG)), read_folder=False, device=str(map_location))
    return trained_net(run, config, model=model)[0]


def trained_net(run: RunDir, config: Config, *, model: nn.Module | None = None,
                reader: str = "load_net") -> tuple[LocalNet, dict[str, Any]]:
    """``run``'s network with its checkpoint's weights, in eval mode, on ``config``'s device and in the run's
    memory layout (so that its sums, and figures, are the run's), and the checkpoint; ``net.class_names`` is
    the name of each class (``training.classes.class_labels`` of the names the run recorded)."""
    device = resolve_device(config.run.device)
    checkpoint = trained_checkpoint(run, config, reader=reader)  # on the CPU: the optimizer state stays there
    net = build_net(net_to_build(config.net, run), model)
    load_weights(net, checkpoint["model"], run.file(CHECKPOINT), READ_FIX)
    net.to(device)
    if config.run.channels_last:
        to_channels_last(net)
    net.class_names = class_labels(checkpoint.get("class_names"), config.net.num_classes)
    return net.eval(), checkpoint
