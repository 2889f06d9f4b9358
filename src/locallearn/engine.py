"""The training step: the one place in the library that calls ``backward()`` and ``optimizer.step()``."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from locallearn.net import ForwardState, LocalNet

# (k, inputs, state, labels) -> (loss, metrics, h): module k's training computation (see module_objective)
Objective = Callable[[int, torch.Tensor, ForwardState, torch.Tensor], tuple]


def train_step(
    net: LocalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimizer step of greedy local learning (METHODS.md 1).

    For each module in order: forward from the detached (context-augmented) input, local loss, and
    ``backward()`` at once, so the module's graph is freed before the next module runs and peak
    activation memory is one module's, not the network's. Then one optimizer step for all modules.

    Returns floats: ``loss`` (sum of the module losses), and per module k ``loss/k``, ``acc/k`` (where
    the head gives logits), ``task/k``, ``rec/k``, ``feat/k`` (where used).
    """
    stats, _ = train_modules(
        net, range(net.num_modules), images, net.begin(images), labels, optimizer, autocast_dtype=autocast_dtype
    )
    stats["loss"] = sum(stats[f"loss/{k}"] for k in range(net.num_modules))
    return stats


def module_objective(
    net: LocalNet, k: int, inputs: torch.Tensor, state: ForwardState, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Module k's training computation: (loss, metrics, output h).

    ``inputs`` is the image for k = 0, else module k−1's output, which the hand-off detaches and
    augments with context here — the context encoders at boundary k−1 are trained by module k's loss.
    """
    x = net.handoff(k - 1, inputs, state) if k > 0 else inputs
    h = net.module_forward(k, x, state)
    loss, metrics = net.local_loss(k, h, labels, images=state.image, inputs=x, state=state)
    return loss, metrics, h


def train_modules(
    net: LocalNet,
    modules: range,
    inputs: torch.Tensor,
    state: ForwardState,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    objective: Objective | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """One optimizer step of the consecutive ``modules`` (all of them in ``train_step``; a pipeline
    stage's own in ``locallearn.distributed``): each module's forward, local loss and backward in turn,
    then ``optimizer.step()``. ``optimizer`` must hold exactly the parameters these modules train.

    ``inputs``: the image if ``modules`` starts at 0, else the output of module ``modules.start − 1``.
    ``state`` carries the image and the context history ĥ_j across the hand-offs. ``objective`` replaces
    ``module_objective`` (a data-parallel stage passes its DDP-wrapped modules).
    Returns the per-module metrics as floats and the last module's detached output.
    """
    net.train()
    optimizer.zero_grad(set_to_none=True)
    objective = objective or (lambda k, x, s, y: module_objective(net, k, x, s, y))
    device = inputs.device.type
    amp = torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    metrics: dict[str, torch.Tensor] = {}
    h = inputs
    for k in modules:
        with amp:
            loss, parts, h = objective(k, h, state, labels)
        loss.backward()
        metrics.update({f"{name}/{k}": value for name, value in parts.items()})
        del loss
    optimizer.step()
    return {name: float(value) for name, value in metrics.items()}, h.detach()
