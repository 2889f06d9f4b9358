"""How epochs are run: the protocol ``fit`` drives, and the one-process implementation of it.

``fit`` (``training.fit``) owns the run — epochs, the run directory, resume, logging — and asks a *runner*
to do the work of each epoch. A ``Launcher`` says how processes are arranged (one here; one per pipeline
rank in ``locallearn.distributed``) and builds the runner once the run's config is settled:

    Launcher:  is_main (writes the run directory and logs), share(value) (the main process's value on every
               process), runner(config, run=..., resume=..., log=...) → Runner
    Runner:    net   steps_per_epoch   class_names (the training data's, or None)
               rebuilt (built from the run's record of its pretrained checkpoint: weights must be restored)
               train_epoch(epoch, lr_at) → train metrics     evaluate() → test metrics
               save(run, state)   restore(run) → state or None     describe() → log lines
               summary(history) → the runner's own summary fields      close()

The pieces of a single-process epoch live here too: ``train_one_epoch`` and ``evaluate`` (the network's
own inference forward, also what each pipeline stage runs for its modules), ``make_optimizer``,
``load_data`` and ``compile_parts``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import shlex
import time
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from locallearn.data import BatchLoader, describe_dataset, load_split
from locallearn.data.imagefolder import IMAGEFOLDER, ImageFolder, Item, kept_items, scan_image_folder
from locallearn.data.specs import DatasetSpec
from locallearn.engine import NonFiniteLossError, first_non_finite, label_error, train_step
from locallearn.memory import StepMemoryMeter
from locallearn.config import NetConfig
from locallearn.net import LocalNet, build_net, check_batch, check_logits, old_parameter_order
from locallearn.training import interrupt
from locallearn.training.config import PYTHON_DATA, Config, OptimConfig, option, read_mapping, run_id_of
from locallearn.progress import Progress
from locallearn.training.rundir import CHECKPOINT, CONFIG, PRETRAINED, RunDir, seed_everything

Log = Callable[[str], None]
CHECK_EVERY = 32  # training steps between checks for a non-finite loss (each check waits for the device)


def loader_class_names(loader: Iterable) -> list[str] | None:
    """The names of labels 0, 1, ... of a dataset that has them (an image folder's classes), else None."""
    names = getattr(getattr(loader, "spec", None), "class_names", None)
    return list(names) if names else None


def check_class_names(trained: list[str] | None, now: list[str] | None, *, where: str, fix: str) -> None:
    """Refuse data whose classes are not the ones a run was trained on, in that order (label i is the
    i-th name): its labels would mean other things. Nothing to compare where either side names none."""
    if trained and now and list(trained) != list(now):
        show = lambda names: ", ".join(names[:8]) + (f", … ({len(names)})" if len(names) > 8 else "")  # noqa: E731
        raise ValueError(f"{where} was trained on the classes {show(trained)} but the data given holds {show(now)}; "
                         f"{fix}")


class Runner(Protocol):
    net: LocalNet
    steps_per_epoch: int
    class_names: list[str] | None  # the training data's, where it names its classes (an image folder)
    rebuilt: bool  # built from the run's record (net_to_build): its weights must come from a checkpoint

    def train_epoch(self, epoch: int, lr_at: Callable[[int], float]) -> dict[str, Any]: ...
    def evaluate(self) -> dict[str, Any]: ...
    def save(self, run: RunDir, state: dict[str, Any]) -> None: ...
    def restore(self, run: RunDir) -> dict[str, Any] | None: ...
    def describe(self) -> list[str]: ...
    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]: ...  # the runner's own figures
    def close(self) -> None: ...


class Launcher(Protocol):
    is_main: bool

    def share(self, value: Any) -> Any: ...
    def runner(self, config: Config, *, run: RunDir, resume: bool, log: Log) -> Runner: ...


class SingleProcess:
    """The launcher of a run in this process. ``data``: (train, test) iterables of (images, labels) batches to
    use instead of the config's dataset (``training.train``), ``class_names`` their labels' names; ``model``: a
    model object to cut instead of the one the config names (a ``Backbone`` or an ``nn.Sequential``)."""

    is_main = True

    def __init__(self, *, data: tuple[Iterable, Iterable] | None = None, model: nn.Module | None = None,
                 class_names: list[str] | None = None) -> None:
        self.data, self.model, self.class_names = data, model, class_names

    def share(self, value: Any) -> Any:
        return value

    def runner(self, config: Config, *, run: RunDir, resume: bool, log: Log) -> LocalRunner:
        return LocalRunner(config, log=log, data=self.data, model=self.model, rebuild_from=run if resume else None,
                           class_names=self.class_names)


class LocalRunner:
    """Every module in this process, on one device: the data, the network, one optimizer."""

    def __init__(
        self, config: Config, *, log: Log = print, data: tuple[Iterable, Iterable] | None = None,
        model: nn.Module | None = None, rebuild_from: RunDir | None = None, class_names: list[str] | None = None,
    ) -> None:
        """``rebuild_from``: the run being resumed (``net_to_build``); ``class_names``: the names of labels 0,
        1, ... of batches given from Python (a dataset names its own)."""
        self.config, self.log = config, log
        self.device = resolve_device(config.run.device)
        # The data first: a missing dataset fails before anything else is built or written.
        if data is None:
            self.train_loader = load_data(config, train=True, device=self.device, log=log)
            self.test_loader = load_data(config, train=False, device=self.device, log=log)
        else:
            self.train_loader, self.test_loader = data
        self.class_names = list(class_names) if class_names else loader_class_names(self.train_loader)
        seed_everything(config.run.seed)
        built = net_to_build(config.net, rebuild_from)
        self.rebuilt = built is not config.net  # the weights must then come from the run's checkpoint
        self.net = build_net(built, model).to(self.device)
        check_logits(self.net)
        check_batch(self.net, config.optim.batch_size, "give --batch-size 2 or more" if data is None else
                    "give batches of 2 or more images")
        if config.run.channels_last:
            to_channels_last(self.net)
        self.optimizer = make_optimizer(self.net, config.optim)
        self.steps_per_epoch = _length(self.train_loader)
        if config.optim.schedule == "step" and self.steps_per_epoch is None:
            raise ValueError("schedule: a per-step schedule needs the number of batches per epoch; give training data "
                             "with a len() (a DataLoader, a list), or schedule='epoch'.")
        if config.run.compile:
            compile_parts(self.net)

    def train_epoch(self, epoch: int, lr_at: Callable[[int], float]) -> dict[str, Any]:
        if hasattr(self.train_loader, "set_epoch"):  # BatchLoader; a DataLoader reshuffles by itself
            self.train_loader.set_epoch(epoch)
        return train_one_epoch(
            self.net, self.train_loader, self.optimizer, autocast_dtype=self.config.autocast_dtype,
            description=f"epoch {epoch}/{self.config.optim.epochs}", log=self.log, lr_at=lr_at,
        )

    def evaluate(self) -> dict[str, Any]:
        start = time.perf_counter()
        result = evaluate(self.net, self.test_loader, autocast_dtype=self.config.autocast_dtype, log=self.log)
        return {**result, "eval_time_s": time.perf_counter() - start}

    def save(self, run: RunDir, state: dict[str, Any]) -> None:
        run.save_checkpoint({**state, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict()})

    def restore(self, run: RunDir) -> dict[str, Any] | None:
        dataset = self.config.data.dataset  # a run from Python: the fixes name train()'s keywords, not flags
        state = run.load_checkpoint(fallback=True, log=self.log, overwrite=option(dataset, "overwrite"))
        if state is None and run.has_checkpoint(stages=True):  # only a pipeline's stage files: not started over
            command, unknown = pipeline_resume(run)
            raise ValueError(f"--resume: {run.path} has no checkpoint.pt, only the stage files of the pipeline that "
                             f"trained it, which that pipeline alone can resume from; resume it with "
                             f"`{command}`{unknown}, or start over with --overwrite.")
        if state is not None:
            load_weights(self.net, state["model"], run.file(CHECKPOINT), resume_fix(dataset))
            optimizer_state = state["optimizer"]
            if state["format"] == 1:  # parameters were ordered otherwise then (net.old_parameter_order)
                optimizer_state = reorder_optimizer_state(optimizer_state, old_parameter_order(self.net))
            self.optimizer.load_state_dict(optimizer_state)
        return state

    def describe(self) -> list[str]:
        if isinstance(self.train_loader, BatchLoader) and isinstance(self.test_loader, BatchLoader):
            return [data_line(self.train_loader, self.test_loader, self.device, self.config.net.num_classes)]
        per_epoch = f"{self.steps_per_epoch} per epoch" if self.steps_per_epoch else "their number per epoch unknown"
        return [f"  data: batches given from Python ({per_epoch}); {self.device}"]

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


# --- pieces --------------------------------------------------------------------------------------------------
def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


# What to do when a checkpoint's weights do not fit the network built now: resuming, and reading a run back
def resume_fix(dataset: str | None = None) -> str:
    """What to do about a checkpoint that does not fit the network a resume built (of a run on ``dataset``)."""
    return f"resume it with the options and model code it was trained with, or start over with {option(dataset, 'overwrite')}"


RESUME_FIX = resume_fix()
READ_FIX = ("the network built from its config.yaml is not the one it trained: load it with the model code it was "
            "trained with (a factory's or a model object's code may have changed since)")


def net_to_build(net: NetConfig, run: RunDir | None, *, stages: bool = False) -> NetConfig:
    """``net``, to build for the weights of ``run``'s checkpoint: where the run started from a transformers
    checkpoint (``pretrained``) and recorded its configuration, that configuration replaces it, so the same
    architecture is built without reading the checkpoint again (``models.hf_common``). Only where the run
    holds a checkpoint (``stages``: or pipeline stage checkpoints), whose weights then replace the network's;
    otherwise ``net`` as it is."""
    if run is None or "pretrained" not in net.model_kwargs or not run.has_checkpoint(stages=stages):
        return net
    recorded = run.read_pretrained(recorded_run_id(run))
    if recorded is None:  # a run of an earlier release, one stopped before it was written, or another run's file
        return net
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(**recorded)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{run.file(PRETRAINED)} is not a usable transformers configuration ({err}); delete it to "
                         f"build the network from its pretrained checkpoint again.") from None
    return dataclasses.replace(net, model_kwargs={**net.model_kwargs, "pretrained": config})


def record_pretrained(run: RunDir, net: LocalNet, run_id: str) -> None:
    """Write the configuration of the checkpoint ``net``'s backbone was loaded from, if any (``net_to_build``),
    marked with the run's id."""
    config = getattr(net.backbone, "pretrained_config", None)
    if config is not None:
        run.write_pretrained(json.loads(config.to_json_string(use_diff=False)), run_id)


def recorded_run_id(run: RunDir) -> str:
    """The id ``run``'s config.yaml records ('' where it has none, or no config.yaml)."""
    return run_id_of(read_mapping(run.file(CONFIG))) if run.file(CONFIG).is_file() else ""


def resume_command(run: RunDir, *, pipeline: bool = False, ranks: int | str | None = None,
                   per_node: int | str | None = None, python: bool = False) -> str:
    """The command that continues ``run``: one process, or (``pipeline``) torchrun with ``ranks`` ranks in all,
    ``per_node`` on each machine where that is known and fewer (several machines); ``python``: the call that
    continues a run of ``training.train`` on batches from Python."""
    if python:
        return f"train(model, train_data, test_data, out={str(run.path)!r}, resume=True)"
    where = shlex.quote(str(run.path))
    if not pipeline:
        return f"locallearn train --out {where} --resume"
    command = f"-m locallearn train --parallel pipeline --out {where} --resume"
    if ranks and per_node and str(per_node) != str(ranks) and int(ranks) % int(per_node) == 0:
        # on several machines torchrun needs the rendezvous (as docs/distributed.md starts such a job): its host
        # and id are the user's, so they stand as placeholders rather than missing from the command
        return (f"torchrun --nnodes {int(ranks) // int(per_node)} --nproc-per-node {per_node} --rdzv-backend c10d "
                f"--rdzv-endpoint HOST:PORT --rdzv-id ID {command}")
    return f"torchrun --nproc-per-node {ranks or 'N'} {command}"


def pipeline_resume(run: RunDir) -> tuple[str, str]:
    """The command that resumes the run ``run`` from its pipeline stage files alone, with the number of ranks
    that wrote them, and what to add where that number is unknown."""
    ranks = run.pipeline_ranks()
    return resume_command(run, pipeline=True, ranks=ranks), "" if ranks else " on as many ranks as trained it"


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: Any, fix: str = RESUME_FIX) -> None:
    """``net.load_state_dict(state)``, a checkpoint of another network refused in one line naming ``source``,
    what differs (missing or unexpected keys, a wrong shape) and ``fix``."""
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        if len(details) > 300:  # the first of many keys: cut between two words
            details = details[:300].rsplit(" ", 1)[0].rstrip(",;") + " …"
        raise ValueError(f"{source} holds the weights of another network ({details}); {fix}.") from None


def reorder_optimizer_state(state: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """An optimizer state_dict saved under another parameter order: ``order[i]`` is today's index of the
    parameter that was i-th then."""
    moved = {order[int(i)]: value for i, value in state["state"].items()}
    return {**state, "state": dict(sorted(moved.items()))}



def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is one; an explicit device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:  # torch's own message lists every device type it knows
        raise ValueError(f"device: unknown device {device!r}; use cpu, cuda, cuda:N or auto.") from None
    if resolved.type == "cpu":
        return resolved
    backend = torch.backends.mps if resolved.type == "mps" else getattr(torch, resolved.type, None)  # torch.cuda, torch.xpu, ...
    if not getattr(backend, "is_available", lambda: False)():
        raise ValueError(f"device: {device} is not available on this machine; use --device cpu.")
    return resolved


# Parameters AdamW does not decay besides biases and norms (one-dimensional): position tables and tokens.
NO_DECAY = ("position_embeddings", "relative_position_bias_table", "cls_token", "mask_token")


def make_optimizer(net: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """One optimizer over every parameter — backbone, heads, decoders and context encoders.

    ``sgd``: one group, weight decay on every parameter (docs/methods.md §7). ``adamw``: two groups, the
    second — biases, norms, position tables — without weight decay (``param_groups``)."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            net.parameters(), lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
        )
    return torch.optim.AdamW(param_groups(net, optim.weight_decay), lr=optim.lr)


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's groups: decayed weights, then what is not decayed (biases, norms: one-dimensional; ``NO_DECAY``)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_data(config: Config, *, train: bool, device: torch.device, log: Log | None = None) -> BatchLoader:
    """The train or test split as a BatchLoader; ``limit_train`` / ``limit_test`` keep the first N images (of an
    image folder, read class by class, N taking the classes in turn: ``first_in_turn``). ``log``: where an
    image folder's decoding progress goes when standard error is not a terminal."""
    data, size = config.data, config.net.image_size
    if data.dataset == PYTHON_DATA:
        raise ValueError(
            f"dataset: this run trained on batches given from Python ({PYTHON_DATA}); pass them again "
            f"(locallearn.training.train(..., resume=True)), or evaluate from Python (locallearn.training.load_net)."
        )
    channels = config.net.in_channels
    images, labels = load_split(data.dataset, data.data_dir, train=train, image_size=size, in_channels=channels,
                                test_fraction=data.test_fraction, limit=data.limit_train if train else data.limit_test,
                                test_limit=data.limit_test, log=log)
    spec = run_spec(config, describe_dataset(data.dataset, data.data_dir, image_size=size,
                                             test_fraction=data.test_fraction, in_channels=channels))
    return BatchLoader(
        images, labels, spec=spec, batch_size=config.optim.batch_size, train=train, seed=config.run.seed, device=device
    )


def run_spec(config: Config, spec: DatasetSpec) -> DatasetSpec:
    """``spec`` with the run's normalisation (the dataset's unless image_mean / image_std set another): the
    constants its loaders used, and the network un-normalises with to get reconstruction targets."""
    return dataclasses.replace(spec, mean=tuple(config.net.image_mean), std=tuple(config.net.image_std))


def split_items(config: Config, *, train: bool) -> tuple[ImageFolder, tuple[Item, ...]] | None:
    """An image folder's scan and the (file, label) of each image of a split, in the loader's order (limits
    applied); None for a dataset whose images are not files of their own."""
    data = config.data
    if data.dataset != IMAGEFOLDER:
        return None
    folder = scan_image_folder(data.data_dir, data.test_fraction)
    return folder, kept_items(folder.train if train else folder.test, data.limit_train if train else data.limit_test)


def split_files(config: Config, *, train: bool) -> list[str] | None:
    """The image file of each image of a split (``split_items``), as strings; None for a dataset's."""
    found = split_items(config, train=train)
    return None if found is None else [str(path) for path, _ in found[1]]


def test_files(config: Config) -> dict[str, Any] | None:
    """What test_files.json records of an image folder's test split, as a run of ``config`` reads it (limits
    applied): the folder, how the split was made, and each image's path within the folder (``/``-separated) with
    its label, in the order the images are tested; None for a dataset whose images are not files of their own."""
    found = split_items(config, train=False)
    if found is None:
        return None
    (folder, items), data = found, config.data
    return {"data_dir": str(folder.root.resolve()), "test_fraction": data.test_fraction, "limit_test": data.limit_test,
            "class_names": list(folder.classes), "images": len(items),
            "files": [[path.relative_to(folder.root).as_posix(), label] for path, label in items]}


def data_line(train: BatchLoader, test: BatchLoader, device: torch.device | str, outputs: int) -> str:
    """The start line that says what a run trains and tests on, and a classifier wider than the data's
    classes (``--num-classes`` above them: accepted, its extra outputs are never a label)."""
    where = f" ({test.spec.read_from})" if test.spec.read_from else ""
    classes = test.spec.num_classes
    wider = f"; the classifier has {outputs} outputs for {classes} classes" if outputs != classes else ""
    return f"  data: {len(train.images)} train, {len(test.images)} test images{where}{wider}; {device}"


def to_channels_last(net: nn.Module) -> None:
    """``--channels-last``: every 4-d parameter and buffer (convolution weights) in channels-last memory
    format, in place (the same tensor objects, so an optimizer built before keeps them); the other tensors
    as they are, where ``Module.to(memory_format=...)`` would refuse a 5-d one. A convolution returns its
    output in its weight's layout, so the activations follow from the first one on."""
    with torch.no_grad():
        for t in itertools.chain(net.parameters(), net.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)


def compile_parts(net: LocalNet) -> None:
    """``torch.compile`` the forward of each unit, objective and context encoder in place (state_dict keys
    unchanged), at static shapes.

    The parts, not the whole net nor a module's step: training runs them one module at a time
    (``engine.train_step``), and the hand-off between modules stays eager, so its ``detach()`` isolates
    the modules exactly as without compilation. Parts of one type and one shape share a compiled graph
    (parameters are graph inputs), so ResNet-110 compiles no more graphs than ResNet-32.

    Dynamo keys its cache on the code object — every ``BasicBlock`` of the net shares
    ``BasicBlock.forward`` — and keeps one graph per variant: per architecture of the part (widths,
    stride), and per call situation: training with an input that needs grad or not (a module's first unit
    gets the detached hand-off), and evaluation. Its default limit of 8 graphs per code object is below
    that for a CIFAR ResNet (5 block architectures × 3), and past the limit Dynamo falls back to eager;
    ``recompile_limit`` is raised to the count (``graphs_per_code``), never lowered. ``dynamic=False``:
    one static graph per shape, as the count assumes; batches of another size run eagerly
    (``train_one_epoch``, ``evaluate``) rather than compile a second set of graphs.
    """
    parts = compiled_parts(net)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, graphs_per_code(parts))
    for part in parts:
        # The class's forward, not Module.compile's _call_impl: Dynamo does not begin tracing in torch's own
        # code, so an nn.Sequential part (the ResNet stem) would stay eager; hooks on a part stay outside
        # its graph. Bound through a partial, so that a deep copy of the part calls the copy.
        part.forward = functools.partial(torch.compile(type(part).forward, dynamic=False, backend=inductor), part)


def relu_backward(grad_output: torch.Tensor, self: torch.Tensor, threshold: float) -> torch.Tensor:
    """``aten.threshold_backward`` (ReLU's backward: ``grad_output`` where ``self > threshold``, else 0) as
    Inductor's CPU code should see it: for ``threshold == 0``, ``where(f == 0, 0, grad_output · f)`` with the
    float ``f = max(sign(self), 0)``.

    The same values, bit for bit, as the stock decomposition ``where(self <= threshold, 0, grad_output)``:
    ``f`` is exactly 1 where self > 0 (``grad_output · 1`` is ``grad_output``, signed zeros and infinities
    included) and 0 elsewhere, where the result is a literal +0 whatever ``grad_output`` holds (an infinite
    or NaN gradient stays blocked, as in eager) — except where ``self`` is NaN (0 here: ``sign`` of NaN is
    0; ``grad_output`` there).

    What changes is what the partitioner saves for the backward: from the stock form it computes the
    comparison in the forward and saves a bool mask (a quarter of the bytes of ``self``), and Inductor's
    CPU code stores bool vectors through a generic scalar path: measured on one thread, a (64, 16, 32, 32)
    ReLU took 10.7 ms forward compiled against 0.13 ms eager, so each part whose graph ends in a ReLU (every
    ResNet block, every context encoder) made compiled training slower than eager. Here the comparison is
    made on ``f``, a float the forward does not have, so the partitioner saves the ReLU's output itself,
    which the next part holds anyway. Other thresholds keep the stock decomposition.
    """
    if threshold != 0:
        from torch._decomp.decompositions import threshold_backward

        return threshold_backward(grad_output, self, threshold)
    passes = torch.sign(self).clamp_min(0)
    return torch.where(passes == 0, 0, grad_output * passes)


def inductor(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """The ``torch.compile`` backend of ``compile_parts``: Inductor, with ``relu_backward`` for ReLU's
    backward where the graph runs on the CPU (on CUDA the stock one, whose saved mask costs less memory and
    whose bool stores are fast).

    AOTAutograd's cache is off for these graphs: its key does not include the decomposition table, so it
    would hand back a graph compiled with the stock decomposition (and keep ours for stock compiles).
    Inductor's own cache keys on the decomposed graph and stays on. Where the environment forces
    AOTAutograd's cache on (``TORCHINDUCTOR_AUTOGRAD_CACHE=1`` wins over the patch), the stock
    decomposition is used: slower on the CPU, never a stale graph.
    """
    import torch._functorch.config
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    on_cpu = all(t.device.type == "cpu" for t in example_inputs if isinstance(t, torch.Tensor))
    if not on_cpu:
        return compile_fx(graph, example_inputs)
    config = torch._functorch.config
    with config.patch(enable_autograd_cache=False, enable_remote_autograd_cache=False):
        if config.enable_autograd_cache or config.enable_remote_autograd_cache:  # forced on by the environment
            return compile_fx(graph, example_inputs)
        table = {**select_decomp_table(), torch.ops.aten.threshold_backward.default: relu_backward}
        return compile_fx(graph, example_inputs, decompositions=table)


def compiled_parts(net: LocalNet) -> list[nn.Module]:
    """What ``compile_parts`` compiles: the backbone's units, the objectives, the context encoders."""
    parts = [*net.backbone.units, *net.objectives]
    if net.context is not None:
        parts += [m for container in net.context.children() for m in container.children()]
    return parts


# Call situations of one part architecture, each its own graph: training with an input that needs grad,
# training with one that does not, evaluation (no grad, eval-mode BatchNorm).
CALL_SITUATIONS = 3


def graphs_per_code(parts: list[nn.Module]) -> int:
    """The most graphs Dynamo can keep for one code object when ``parts`` are compiled: for the ``forward``
    most shared, its distinct part architectures (the module tree as printed, with parameter and buffer
    shapes) times ``CALL_SITUATIONS``."""
    architectures: dict[object, set] = {}
    for part in parts:
        tensors = itertools.chain(part.named_parameters(), part.named_buffers())
        shapes = tuple((name, tuple(t.shape)) for name, t in tensors)
        architectures.setdefault(type(part).forward.__code__, set()).add((repr(part), shapes))
    return CALL_SITUATIONS * max((len(a) for a in architectures.values()), default=0)


@contextlib.contextmanager
def eager_unless(compiled_shape: bool):
    """Compiled parts run eagerly inside unless ``compiled_shape``: a batch of another size than the ones
    compiled for (an epoch's smaller last batch) would compile a second set of graphs for one batch."""
    if compiled_shape:
        yield
    else:
        with torch.compiler.set_stance("force_eager"):
            yield


def train_one_epoch(
    net: LocalNet,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    description: str = "",
    log: Log | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> dict[str, Any]:
    """One pass over ``loader``; the step's metrics averaged over the epoch (weighted by batch size) as
    ``train_<key>``, plus throughput and peak memory.

    Metrics stay on the device and are summed there (float64), so the host waits for the device only every
    ``CHECK_EVERY`` steps, to stop on a non-finite loss (naming its batch) and to show progress. ``lr_at``:
    the learning rate of each step of the epoch (0-based); without it the optimizer's rate is left alone.

    Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU (``peak_memory_kind: cuda_allocated``);
    on a CPU, the peak of the epoch's first step as ``bench memory`` measures it (``StepMemoryMeter``:
    what autograd saves for backward, the tensors held between modules and, under activation
    checkpointing, the activations recomputed in backward; ``saved_tensors``; exact and deterministic,
    parameters and buffers excluded).
    """
    device = next(net.parameters()).device
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    totals: dict[str, torch.Tensor] = {}
    pending: list[torch.Tensor] = []  # losses of the steps since the last check
    seen, peak_bytes, full = 0, 0, None
    start = time.perf_counter()
    total = _length(loader)
    with Progress(total, description, log=log) as progress:
        for i, (images, labels) in enumerate(loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if lr_at is not None:
                set_lr(optimizer, lr_at(i))
            full = full or len(labels)  # the first batch is a full one
            # the meter runs the step eagerly (compiled or not), so a compiled net compiles on step 2
            meter = StepMemoryMeter(net, images) if i == 0 and not on_cuda else contextlib.nullcontext()
            with meter, eager_unless(len(labels) == full):
                try:
                    stats = train_step(net, images, labels, optimizer, autocast_dtype=autocast_dtype, checked=False)
                except IndexError as err:  # cross-entropy's "Target 7 is out of bounds": say what to fix
                    raise label_error(labels, net.config.num_classes, f"training batch {i + 1}") or err from None
            if i == 0 and not on_cuda:
                peak_bytes = meter.peak_bytes
            n = len(labels)
            seen += n
            for key, value in stats.items():
                value = torch.as_tensor(value, dtype=torch.float64)
                totals[key] = totals[key] + value * n if key in totals else value * n
            pending.append(torch.as_tensor(stats["loss"]))
            interrupt.check()
            if len(pending) == CHECK_EVERY or i == (total or 0) - 1:
                check_finite(pending, first=i + 2 - len(pending), batches=total)
                progress.update(len(pending), loss=f"{float(stats['loss']):.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
                pending = []
    if pending:  # data without a len(): the last steps are checked here
        check_finite(pending, first=i + 2 - len(pending), batches=i + 1)
    if not seen:
        raise ValueError("training data: the epoch had no batch; give an iterable of (images, labels) batches that "
                         "can be iterated once per epoch (a DataLoader or a list: an iterator or a generator is used up "
                         "after one).")
    if on_cuda:
        torch.cuda.synchronize(device)
        peak_bytes = torch.cuda.max_memory_allocated(device)
    elapsed = time.perf_counter() - start
    means = {key: float(value) / seen for key, value in totals.items()}
    return epoch_metrics(means, net.num_modules, seen=seen, elapsed=elapsed, peak_bytes=peak_bytes,
                         data=loader_fingerprint(loader),
                         peak_kind="cuda_allocated" if on_cuda else "saved_tensors")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def epoch_metrics(
    means: dict[str, float], num_modules: int, *, seen: int, elapsed: float, peak_bytes: float, peak_kind: str,
    data: str | None = None,
) -> dict[str, Any]:
    """The train part of a metrics line, from the epoch's means of the step's metrics: ``train_loss`` (the
    sum of the module losses), ``train_acc`` (the network's own, last module's accuracy), then every
    per-module metric (``loss/k``, ``acc/k``, ``task/k``, ``rec/k``, ...) module by module; the images seen and,
    for a dataset's split, its ``BatchLoader.fingerprint`` (``data``: ``train_data``); throughput and memory."""
    out: dict[str, Any] = {"train_loss": means.pop("loss"), "train_acc": None}
    for key in sorted(means, key=lambda key: (int(key.rsplit("/", 1)[1]), key)):
        out[f"train_{key}"] = means[key]
    out["train_acc"] = out.get(f"train_acc/{num_modules - 1}")
    out["train_images"] = seen
    if data is not None:
        out["train_data"] = data
    out.update(
        train_time_s=elapsed,
        images_per_s=seen / elapsed if elapsed else 0.0,
        peak_memory_mb=peak_bytes / 2**20,
        peak_memory_kind=peak_kind,
    )
    return out


def loader_fingerprint(loader: Iterable | None) -> str | None:
    """A dataset split's ``BatchLoader.fingerprint``; None for batches given from Python (or no loader)."""
    return loader.fingerprint if isinstance(loader, BatchLoader) else None


def check_finite(losses: list[torch.Tensor], *, first: int, batches: int | None = None) -> None:
    """Raise ``NonFiniteLossError`` naming the first non-finite loss among ``losses`` (batches ``first``…,
    1-based, of ``batches``)."""
    found = first_non_finite(losses)
    if found is not None:
        i, value = found
        of = f" of {batches}" if batches is not None else ""
        raise NonFiniteLossError(f"non-finite loss ({value:.4g}) in batch {first + i}{of}")


@torch.no_grad()
def precise_batchnorm(net: nn.Module, loader: Iterable, batches: int) -> int:
    """Recompute the running statistics of every BatchNorm that inference uses, as the plain average over
    ``batches`` batches of ``loader`` (the training data), and return the number of batches used.

    "Precise BN" for evaluation: the running averages a run keeps (momentum 0.1) lag behind weights that
    change fast, which a short schedule of a local network shows most (benchmarks/README.md, accuracy
    section). Only BatchNorm layers run in training mode, so dropout and the rest stay as in evaluation;
    the inference forward runs, so auxiliary heads and decoders are untouched. The weights are not changed.
    """
    if batches < 1:
        raise ValueError(f"precise BatchNorm needs at least one batch, got {batches}.")
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError("this network has no BatchNorm layer with running statistics to recompute.")
    net.eval()
    device = next(net.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches seen
        m.train()
    used = 0
    try:
        for images, _ in itertools.islice(loader, batches):
            net(images.to(device, non_blocking=True))
            used += 1
            interrupt.check()
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
    return used


@torch.no_grad()
def evaluate(
    net: nn.Module, loader: BatchLoader, *, autocast_dtype: torch.dtype | None = None, log: Log | None = None,
    confusion: bool = False, predictions: bool = False,
) -> dict[str, Any]:
    """Test accuracy (fraction) and cross-entropy of the inference forward (auxiliary heads unused), and the
    number of test images; with
    ``confusion``, also ``"confusion"``: the (C, C) int64 counts of true class (row) against predicted
    class (column), C the classifier's classes (training.classes); with ``predictions``, also per test image in
    the loader's order ``"labels"``, ``"predicted"`` (int64) and ``"confidence"`` (the softmax probability of
    the predicted class, float32), on the CPU."""
    net.eval()
    device = next(net.parameters()).device
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    counts, classes = None, 0
    each: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (labels, predicted, confidence) per batch
    seen, full = 0, None
    with Progress(_length(loader), "evaluation", log=log) as progress:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            full = full or len(labels)
            with amp, eager_unless(len(labels) == full):
                logits = net(images)
            try:
                loss += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum").double()
            except IndexError as err:
                raise label_error(labels, logits.shape[1], f"test batch {seen // full + 1}") or err from None
            predicted = logits.argmax(dim=1)
            correct += (predicted == labels).sum()
            if confusion:  # accumulated on the device: no wait for it per batch (bincount would wait)
                if counts is None:
                    classes = logits.shape[1]
                    counts = torch.zeros(classes * classes, dtype=torch.int64, device=device)  # (C·C,)
                ones = torch.ones_like(labels)
                counts.index_put_((labels * classes + predicted,), ones, accumulate=True)
            if predictions:
                confidence = logits.float().softmax(dim=1).gather(1, predicted[:, None])[:, 0]  # (B,)
                each.append((labels.cpu(), predicted.cpu(), confidence.cpu()))
            seen += len(labels)
            progress.update(1)
            interrupt.check()
    if not seen:
        raise ValueError("test data: it holds no batch; give at least one test batch.")
    result: dict[str, Any] = {"test_acc": int(correct) / seen, "test_loss": float(loss) / seen, "test_images": seen}
    fingerprint = loader_fingerprint(loader)
    if fingerprint is not None:
        result["test_data"] = fingerprint
    if confusion:
        result["confusion"] = counts.view(classes, classes).cpu()  # (C, C): row = true class, column = predicted
    if predictions:
        result.update(zip(("labels", "predicted", "confidence"), (torch.cat(parts) for parts in zip(*each))))
    return result


