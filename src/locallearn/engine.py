"""The training step: the one place in the library that calls ``backward()`` and ``optimizer.step()``."""

from __future__ import annotations

import contextlib

import torch

from locallearn.net import LocalNet


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
    net.train()
    optimizer.zero_grad(set_to_none=True)
    amp = (
        torch.autocast(device_type=images.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    state = net.begin(images)
    x = images
    metrics: dict[str, torch.Tensor] = {}
    for k in range(net.num_modules):
        with amp:
            h = net.module_forward(k, x)
            loss, parts = net.local_loss(k, h, labels, images=images, inputs=x)
        loss.backward()
        metrics.update({f"{name}/{k}": value for name, value in parts.items()})
        if k < net.num_modules - 1:
            with amp:
                x = net.handoff(k, h, state)
        del h, loss
    optimizer.step()
    stats = {name: float(value) for name, value in metrics.items()}
    stats["loss"] = sum(stats[f"loss/{k}"] for k in range(net.num_modules))
    return stats
