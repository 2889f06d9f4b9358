"""The one contract every backbone meets: an ordered list of units.

Running the units in order is the network's forward pass. Local learning cuts this list into K
consecutive modules (see the `split` package and `net.py`), so a backbone never needs to know it is trained
locally. Each unit has a key — ``(stage, block)`` with 0-based blocks, stage 0 the stem — which is how
docs/methods.md §2.2 names cut points. The last unit is the classifier (features → logits).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def modes_kept(*modules: nn.Module, training: bool) -> Iterator[None]:
    """Put ``modules`` in training or eval mode for the block, then give every submodule back its own mode
    (``module.train(was)`` would set them all to the top module's, undoing a BatchNorm the user froze)."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.train(training)
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


class Backbone(nn.Module):
    """Base class: subclasses fill ``units``, ``unit_keys`` and ``image_size``."""

    units: nn.ModuleList
    unit_keys: list[tuple[int, int]]
    image_size: int
    in_channels: int = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x

    @property
    def num_units(self) -> int:
        return len(self.units)

    def init_auxiliary(self, module: nn.Module) -> None:
        """Initialise a part local learning adds to this backbone's network — an auxiliary head, a decoder, a
        context encoder — as this family initialises its own layers. The default keeps PyTorch's (and the
        transformers library's) initialisation; the CIFAR ResNets apply the reference code's rule."""

    def named_splits(self, name: str) -> dict[int, list[tuple[int, int]]]:
        """Cuts by K that this backbone defines itself for a split name (Swin's ``stages``); {} for none,
        in which case ``split.tables`` or a computed split apply."""
        return {}

    @torch.no_grad()
    def unit_shapes(self, image_size: int | None = None) -> list[tuple[int, ...]]:
        """Output shape (without batch) of every unit, found by one eval-mode forward of a blank image.

        Eval mode, so BatchNorm running statistics are untouched.
        """
        size = image_size or self.image_size
        with modes_kept(self, training=False):
            param = next(self.parameters())
            x = torch.zeros(1, self.in_channels, size, size, device=param.device, dtype=param.dtype)
            shapes = []
            for unit in self.units:
                x = unit(x)
                shapes.append(tuple(x.shape[1:]))
        return shapes
