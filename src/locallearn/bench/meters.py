"""Memory meters.

``SavedTensorMeter`` counts the bytes autograd holds for backward, through
``torch.autograd.graph.saved_tensors_hooks``: every tensor saved for backward is counted once per
storage (two views of one buffer cost one buffer) from the moment it is saved until the graph that
saved it is freed; parameters are excluded (they exist whatever the training method). The count is
exact and hardware-independent, so CI and the README can use it on a CPU.

What it does not see: tensors autograd does not save (the module outputs a caller keeps, gradients,
optimizer state) and — under activation checkpointing — the activations recomputed during backward,
which checkpoint's own hooks hold. ``locallearn.bench`` accounts for the latter separately.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn


class _Packed:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: int, meter: "SavedTensorMeter") -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:  # the graph holding this saved tensor was freed
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: ``with SavedTensorMeter(params) as m: ...``; then ``m.peak_bytes``."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        key = _storage_key(tensor)
        if key in self._excluded:
            return tensor
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = tensor.untyped_storage().nbytes()
            self.live_bytes += self._sizes[key]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._refs[key] += 1
        return _Packed(tensor, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live_bytes -= self._sizes.pop(key)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def module_activation_bytes(module: nn.Module, in_shape: tuple[int, ...], *, batch: int = 2) -> float:
    """Saved-for-backward bytes of one training-mode forward of ``module`` on a blank input, per sample.

    Runs on a copy, so BatchNorm statistics of the real module are untouched.
    """
    module = copy.deepcopy(module).train()
    param = next(module.parameters(), None)
    device = param.device if param is not None else "cpu"
    x = torch.zeros(batch, *in_shape, device=device)
    with SavedTensorMeter(module.parameters()) as meter:
        out = module(x)
        del out
    return meter.peak_bytes / batch


def unit_activation_bytes(backbone: nn.Module, image_size: int, *, batch: int = 2) -> list[float]:
    """Per-sample saved-for-backward bytes of each unit of a backbone, in order."""
    in_shapes = [(backbone.in_channels, image_size, image_size)] + backbone.unit_shapes(image_size)[:-1]
    return [module_activation_bytes(u, s, batch=batch) for u, s in zip(backbone.units, in_shapes)]
