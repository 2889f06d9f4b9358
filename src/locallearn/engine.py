"""The training step: the one place in the library that calls ``backward()`` and ``optimizer.step()``.

Metrics leave the engine as detached 0-d tensors on the device: converting them to Python numbers would
make the host wait for the device, once per metric of every module of every step. Whoever logs converts
them, when it logs (``training.runner``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import weakref
from typing import Callable

import torch

from locallearn.methods import ForwardState
from locallearn.models.base import modes_kept
from locallearn.net import LocalNet, check_batch

# (k, inputs, state) -> (loss, metrics, h): module k's training computation (see module_objective)
Objective = Callable[[int, torch.Tensor, ForwardState], tuple]


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stops (``train_step``: before the optimizer step)."""


def train_step(
    net: LocalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    checked: bool = True,
) -> dict[str, torch.Tensor]:
    """One optimizer step of greedy local learning (docs/methods.md §1).

    For each module in order: forward from the detached (context-augmented) input, local loss, and
    ``backward()`` at once, so the module's graph is freed before the next module runs and peak
    activation memory is one module's, not the network's. Then one optimizer step for all modules.

    The arguments are checked first, in one-line errors (``check_inputs``). ``checked``: also what needs the
    values, and so waits for the device — labels in 0..num_classes−1 and finite images, before anything
    runs, and a finite loss before the optimizer step, which a NaN or infinite loss does not take
    (``NonFiniteLossError``; BatchNorm statistics have then seen the batch). The trainer passes False: it
    checks every 32 steps and, on a non-finite loss, stops without writing a checkpoint.

    Returns detached 0-d tensors: ``loss`` (the sum of the module losses, in float64), and per module k
    ``loss/k``, ``acc/k`` (where the head gives logits), ``task/k``, ``rec/k``, ``feat/k`` (where used).
    """
    check_inputs(net, images, labels, optimizer, values=checked, autocast=autocast_dtype is not None)
    metrics, _ = train_modules(
        net, range(net.num_modules), images, net.begin(images, labels), optimizer, autocast_dtype=autocast_dtype,
        finite=checked,
    )
    metrics["loss"] = total_loss(metrics, range(net.num_modules))
    return metrics


def check_inputs(net: LocalNet, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 *, values: bool, autocast: bool = False) -> None:
    """``train_step``'s arguments, each refused in one line naming the fix: a LocalNet, an optimizer, a
    floating-point (batch, channels, height, width) batch of the network's channels and dtype (any floating
    dtype under ``autocast``) and int64 labels, one per image; with ``values``, labels within the classes and
    finite images (reading them waits for the device)."""
    if not isinstance(net, LocalNet):
        raise ValueError(f"net: expected a LocalNet (locallearn.build(...)), got {type(net).__name__}.")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer: expected a torch.optim.Optimizer over net.parameters(), got "
                         f"{type(optimizer).__name__}.")
    param = next((p for p in net.parameters() if p.is_floating_point()), None)
    check_tensors(images, labels, dtype=param.dtype if param is not None else None, autocast=autocast)
    if images.shape[1] != net.config.in_channels:
        raise ValueError(f"images: {images.shape[1]} channels, but the network takes {net.config.in_channels}; give "
                         f"images of its channels, or build it with in_channels={images.shape[1]}.")
    if tuple(images.shape[-2:]) != tuple(net.image_shape[1:]):
        h, w = net.image_shape[1:]
        raise ValueError(f"images: {images.shape[-2]}×{images.shape[-1]}, but the network was built for {h}×{w} "
                         f"images (its cuts, heads and context encoders are sized for them); resize them, or build "
                         f"it with image_size={images.shape[-1]}.")
    # a batch of one image: a BatchNorm1d (DGL's heads) cannot normalise it (the contrastive loss of one image is
    # 0 with zero gradients: harmless, so not refused here, where a DataLoader's last batch may be one image)
    if len(images) < 2 and any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()):
        check_batch(net, len(images), "give batches of 2 or more images (a DataLoader's drop_last=True leaves out a "
                                      "last batch of one)")
    if values:
        error = label_error(labels, net.config.num_classes, "the batch")
        if error is not None:
            raise error
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images: the batch holds NaN or infinite values; nothing was trained (check the data "
                             "and its normalisation).")


def check_tensors(images: object, labels: object, *, dtype: torch.dtype | None, autocast: bool = False,
                  where: str = "") -> None:
    """A batch's tensors alone, each refused in one line (``where`` first) naming the fix: images a non-empty
    floating-point (batch, channels, height, width) tensor of ``dtype`` (or, under ``autocast``, float16 or
    bfloat16: autocast casts those, while a float64 batch meets float32 weights in the first layer),
    labels int64 or uint8 class indices (the integer types cross-entropy takes), one per image. What also
    needs the network (channels, size) is ``check_inputs``'s; what needs a DataLoader's first batch,
    ``training.api.first_batch``'s."""
    if not isinstance(images, torch.Tensor):
        shape = f" of shape {tuple(images.shape)}" if hasattr(images, "shape") else ""
        raise ValueError(f"{where}images must be a torch tensor, got {type(images).__name__}{shape}; e.g. "
                         f"torch.as_tensor(images), or a DataLoader over a TensorDataset.")
    if images.dim() != 4:
        raise ValueError(f"{where}images must be a (batch, channels, height, width) tensor, got shape "
                         f"{tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"{where}images must be floating point (normalised in your loader), got {images.dtype}; "
                         f"e.g. images.float() / 255, then the dataset's mean and std.")
    if not len(images):
        raise ValueError(f"{where}images: the batch is empty; give at least one image.")
    half = autocast and images.dtype in (torch.float16, torch.bfloat16)
    if dtype is not None and images.dtype != dtype and not half:
        raise ValueError(f"{where}images are {images.dtype} but the network computes in {dtype}; e.g. "
                         f"images.to({dtype}).")
    if (not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.uint8)
            or labels.shape != images.shape[:1]):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{where}labels must be an int64 (or uint8) tensor of class indices, one per image "
                         f"({len(images)},), got {got}; e.g. labels.long().")


def label_error(labels: torch.Tensor, classes: int, where: str) -> ValueError | None:
    """The one-line error for labels outside 0..classes−1 (cross-entropy's "Target 7 is out of bounds"),
    or None when they are not what went wrong. The network's classes are the run's num_classes."""
    if not labels.numel() or (labels.min() >= 0 and labels.max() < classes):
        return None
    if labels.min() < 0:  # an "ignore" index or a sign slip: no number of classes takes it
        return ValueError(f"labels: {where} holds label {int(labels.min())}; labels are class indices 0..{classes - 1}, "
                          f"every image labelled.")
    return ValueError(f"labels: {where} holds label {int(labels.max())} but the network has {classes} classes "
                      f"(labels 0..{classes - 1}); give num_classes as the number of classes of the data.")


def total_loss(metrics: dict[str, torch.Tensor], modules: range) -> torch.Tensor:
    """The sum of the module losses, in float64 and in module order (the same value whichever process or
    device adds them)."""
    total = torch.zeros((), dtype=torch.float64, device=metrics[f"loss/{modules.start}"].device)
    for k in modules:
        total = total + metrics[f"loss/{k}"].double()
    return total


def module_objective(
    net: LocalNet, k: int, inputs: torch.Tensor, state: ForwardState
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Module k's training computation: (loss, metrics, output h).

    ``inputs`` is the image for k = 0, else module k−1's output, which the hand-off detaches and
    augments with context here — the context encoders at boundary k−1 are trained by module k's loss.
    """
    x = net.handoff(k - 1, inputs, state) if k > 0 else inputs
    h = net.module_forward(k, x, state)
    loss, metrics = net.local_loss(k, h, x, state)
    return loss, metrics, h


def train_modules(
    net: LocalNet,
    modules: range,
    inputs: torch.Tensor,
    state: ForwardState,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    objective: Objective | None = None,
    finite: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step of the consecutive ``modules`` (all of them in ``train_step``; a pipeline
    stage's own in ``locallearn.distributed``): each module's forward, local loss and backward in turn,
    then ``optimizer.step()``. ``optimizer`` must hold exactly the parameters these modules train.

    ``inputs``: the image if ``modules`` starts at 0, else the output of module ``modules.start − 1``.
    ``state`` carries the image, the labels and the context history ĥ_j across the hand-offs. ``objective``
    replaces ``module_objective`` (a data-parallel stage passes its DDP-wrapped modules). ``finite``: a
    non-finite module loss raises ``NonFiniteLossError`` instead of the optimizer step (waits for the device).
    Returns the per-module metrics (detached tensors) and the last module's detached output.
    """
    net.train()
    check_optimizer(net, modules, optimizer)
    optimizer.zero_grad(set_to_none=True)
    objective = objective or (lambda k, x, s: module_objective(net, k, x, s))
    device = inputs.device.type
    amp = torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    metrics: dict[str, torch.Tensor] = {}
    h = inputs
    for k in modules:
        with amp:
            loss, parts, h = objective(k, h, state)
        if loss.requires_grad:  # a module whose every parameter is frozen has nothing to train: forward only
            loss.backward()
        metrics.update({f"{name}/{k}": value for name, value in parts.items()})
        del loss
    found = first_non_finite([metrics[f"loss/{k}"] for k in modules]) if finite else None
    if found is not None:
        i, value = found
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite loss ({value:.4g}) in module {modules[i]}; the optimizer step was not taken, so the "
            f"parameters are as before it; lower the learning rate, or check the data.")
    optimizer.step()
    return metrics, h.detach()


def first_non_finite(losses: list[torch.Tensor]) -> tuple[int, float] | None:
    """The index and value of the first NaN or infinite loss among ``losses`` (0-d tensors), or None; it reads
    them, so it waits for the device."""
    values = torch.stack([t.detach().reshape(()).double().cpu() for t in losses])
    bad = (~torch.isfinite(values)).nonzero()
    return (int(bad[0]), float(values[int(bad[0])])) if len(bad) else None


def check_optimizer(net: LocalNet, modules: range, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer that lacks trainable parameters of ``modules``: one made from the user's model
    (``model.parameters()``) instead of the network's would leave the auxiliary heads, decoders and context
    encoders untrained, silently. Checked once per optimizer, network and parameter groups' sizes."""
    signature = (id(net), modules.start, modules.stop, tuple(len(group["params"]) for group in optimizer.param_groups))
    if _checked.get(optimizer) == signature:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for k in modules:
        missing = [p for p in net.module_parameters(k) if p.requires_grad and id(p) not in held]
        if missing:
            raise ValueError(
                f"optimizer: it does not hold {len(missing)} trainable parameter(s) of module {k} (its units, "
                f"objective or context encoders); build it from net.parameters(), the local network's (heads "
                f"and encoders included), not from the model's."
            )
    _checked[optimizer] = signature


_checked: "weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple]" = weakref.WeakKeyDictionary()


def time_modules(
    net: LocalNet, images: torch.Tensor, labels: torch.Tensor, *, repeats: int = 2
) -> list[float]:
    """Median seconds of each module's training computation (hand-off, forward, local loss, backward) on
    ``images``, after one warm-up pass; what the pipeline balances its stages on. Gradients are cleared
    afterwards; parameters, BatchNorm running statistics and the random generator are restored, so
    measuring changes nothing a run computes."""
    saved_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    cuda = images.device.type == "cuda"
    times: list[list[float]] = [[] for _ in range(net.num_modules)]
    try:  # the generators of the CPU and of the images' GPU (dropout, random augmentation inside a unit)
        with torch.random.fork_rng(devices=[images.device] if cuda else []), modes_kept(net, training=True):
            for rep in range(repeats + 1):
                state = net.begin(images, labels)
                inputs = images
                for k in range(net.num_modules):
                    if cuda:
                        torch.cuda.synchronize(images.device)
                    start = time.perf_counter()
                    loss, _, h = module_objective(net, k, inputs, state)
                    if loss.requires_grad:  # (a module with every parameter frozen runs forward only)
                        loss.backward()
                    if cuda:
                        torch.cuda.synchronize(images.device)
                    if rep:  # the first pass is a warm-up
                        times[k].append(time.perf_counter() - start)
                    inputs = h.detach()
    finally:
        net.zero_grad(set_to_none=True)
        net.load_state_dict(saved_state)
    return [statistics.median(t) for t in times]
