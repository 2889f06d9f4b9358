"""Memory meters: what one training step holds for backward (meter a) and what a GPU allocates (meter b).

A core utility: training logs meter (a) on a CPU, the computed split (``split.auto``) is built on it, and the
benchmarks report both.

**Meter (a), ``SavedTensorMeter``** counts the bytes autograd holds for backward, through
``torch.autograd.graph.saved_tensors_hooks``: every tensor saved for backward is counted once per
storage (two views of one buffer cost one buffer) from the moment it is saved until the graph that
saved it is freed; parameters (and, when passed, buffers) are excluded: they exist whatever the
training method. The count depends only on the operations and the shapes, never on the values, the
allocator or the hardware, so it is exact and repeatable on a CPU; CI and the README use it.

``StepMemoryMeter`` applies it to one whole ``locallearn.train_step`` of a ``LocalNet`` and defines the
figure the benchmarks report, ``peak_activation_bytes``: the largest, over the step, of the bytes of

1. the storages autograd has saved for backward and not yet freed (meter a); plus
2. the storages the step holds across module boundaries without autograd saving them: the input batch,
   the current hand-off (module k's detached, context-augmented input) and ContSup's context history
   ĥ_j. Local learning keeps these in Python, not in a graph, so a saved-tensor hook alone would miss
   them; they are small (one feature map each), but a fair comparison with end-to-end training — whose
   graph saves its input — counts them. A storage both saved and held counts once; plus
3. under activation checkpointing, the activations recomputed during backward (see below).

Not counted, for every method alike: parameters, gradients, optimizer state, and the transient
outputs of an operation that nothing keeps (the allocator's figure, meter b, sees those).

**Activation checkpointing** (non-reentrant ``torch.utils.checkpoint``, as ``LocalNet`` uses it for the
``activation_checkpointing`` option).
PyTorch's saved-tensor hooks form a stack of which only the innermost applies. Inside a checkpointed
segment checkpoint pushes its own hook, which stores a placeholder instead of the tensor, so meter (a)
sees nothing of the segment's activations in the forward pass — correctly, since nothing is kept. What
checkpoint keeps is the segment's input, saved through ``_make_saved_tensor`` *before* its hook is
pushed, so meter (a) counts it like any saved tensor. In backward, the first unpack of a segment's
placeholder re-runs the whole segment under checkpoint's ``_recomputation_hook`` (innermost again, so
invisible to meter a); the recomputed activations are then held until each is unpacked by its backward
node. The held amount is therefore largest when the recomputation ends, and it is the segment's own
saved-for-backward bytes: the recomputation saves exactly the tensors the original forward would have.
``StepMemoryMeter`` accounts for it in two steps:

- before the step it calibrates, for every backbone unit, what a training-mode forward of that unit
  saves at the step's shapes (``UnitSaves``): its own bytes, whether it saves its input and whether it
  saves its output. A segment's recomputed bytes are the units' own bytes plus each later unit's input
  where the previous unit did not already save it as its output; the first unit's input is the segment
  input, which checkpoint stores and meter (a) already counts (``recompute_increment``);
- during the step a forward pre-hook on every unit sees the recomputation happen — a unit running while
  autograd executes a backward pass can only be checkpoint re-running its segment — and adds the units'
  calibrated bytes, run by run, to the live count (``SavedTensorMeter.set_unseen``), so the peak is
  ``max over time of (meter a's live bytes + the recomputed segment's bytes so far)``. A run starts at
  a unit that does not follow the previously recomputed one; the previous segment's activations are all
  freed by then, since a segment's backward ends before the one before it begins.

``tests/test_memory.py`` checks the result against an independent computation (each segment run
un-checkpointed under its own meter, combined by the formula).

**Meter (b), ``CudaPeakMeter``**: ``torch.cuda.max_memory_allocated`` over the step, everything the
caching allocator handed out (parameters, gradients, optimizer state, workspaces included): the figure
comparable to the papers' "GPU memory". It needs a GPU and is not deterministic across hardware.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
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
    """Context manager: ``with SavedTensorMeter(params) as m: ...``; then ``m.peak_bytes``.

    ``live_bytes``: storages saved for backward and not yet freed, plus those passed to ``hold``.
    ``unseen_bytes``: bytes the caller knows are held for backward out of the hooks' sight (``set_unseen``).
    ``peak_bytes``: the largest ``live_bytes + unseen_bytes`` since entry or the last ``reset_peak``;
    ``seen_peak_bytes``: the largest ``live_bytes`` since entry (what the hooks alone saw).

    Inside the meter, ``torch.compile``d code runs eagerly (stance ``force_eager``): the meter counts what
    eager autograd saves, the figure it documents, whereas a compiled graph saves what its partitioner
    chooses; and Dynamo would trace the hooks themselves — Python called for every saved tensor — and
    recompile them for each tensor type and rank (``training.runner.compile_parts``).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._held: list[tuple[int, torch.Tensor]] = []
        self.live_bytes = 0
        self.unseen_bytes = 0
        self.peak_bytes = 0
        self.seen_peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _acquire(self, tensor: torch.Tensor) -> int | None:
        """Count one more reference to ``tensor``'s storage; None for an excluded storage."""
        key = _storage_key(tensor)
        if key in self._excluded:
            return None
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = tensor.untyped_storage().nbytes()
            self.live_bytes += self._sizes[key]
            self.seen_peak_bytes = max(self.seen_peak_bytes, self.live_bytes)
            self._update_peak()
        self._refs[key] += 1
        return key

    def _pack(self, tensor: torch.Tensor):
        key = self._acquire(tensor)
        # Keep a detached alias: same storage, no grad_fn. Keeping ``tensor`` itself would, for a saved
        # output, make a cycle (tensor → grad_fn → packed → tensor) that only the garbage collector frees.
        return tensor if key is None else _Packed(tensor.detach(), key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live_bytes -= self._sizes.pop(key)

    def _update_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.live_bytes + self.unseen_bytes)

    def hold(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count ``tensors`` as held (until ``release_held``) whether or not autograd saves them."""
        for tensor in tensors:
            key = self._acquire(tensor)
            if key is not None:
                self._held.append((key, tensor))  # the reference keeps the storage (and its key) alive

    def release_held(self) -> None:
        held, self._held = self._held, []
        for key, _ in held:
            self._release(key)

    def set_unseen(self, nbytes: int) -> None:
        self.unseen_bytes = nbytes
        self._update_peak()

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes + self.unseen_bytes

    def counts(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s storage is among the live ones."""
        return _storage_key(tensor) in self._refs

    def __enter__(self) -> "SavedTensorMeter":
        self._eager = torch.compiler.set_stance("force_eager")  # takes effect here; __exit__ restores
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._eager.__exit__(*exc)


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _in_backward() -> bool:
    """Whether autograd is executing a backward pass on this thread (checkpoint uses the same test)."""
    return torch._C._current_graph_task_id() != -1


class StepMemoryMeter:
    """Meter (a) around one training step of ``net`` on ``images`` (see the module docstring).

    ``with StepMemoryMeter(net, images) as m: train_step(net, images, labels, optimizer)``; then
    ``m.peak_bytes`` (the benchmarks' ``peak_activation_bytes``), ``m.module_peaks`` (the peak while
    module k ran: its hand-off, forward, loss and backward), ``m.peak_module``, ``m.seen_peak_bytes``
    (hooks alone, without recomputation) and ``m.recompute_bytes`` (the largest recomputed segment).
    """

    def __init__(self, net: nn.Module, images: torch.Tensor) -> None:
        self.net = net
        self._units = list(net.backbone.units)
        self._starts = {a: k for k, (a, b) in enumerate(net.bounds)}  # first unit → module index
        self._recompute = unit_recompute_bytes(net.backbone, images) if net.activation_segments else None
        self.module_peaks = [0] * net.num_modules
        self.recompute_bytes = 0
        self.seen_peak_bytes = 0
        self.peak_bytes = 0

    @property
    def peak_module(self) -> int:
        return max(range(len(self.module_peaks)), key=self.module_peaks.__getitem__)

    def __enter__(self) -> "StepMemoryMeter":
        self._meter = SavedTensorMeter(itertools.chain(self.net.parameters(), self.net.buffers()))
        self._module, self._state = -1, None
        self._last_recomputed, self._run_bytes = -2, 0
        begin = self.net.begin

        def capture(*args, **kwargs):  # the step's ForwardState: the image and the context history
            self._state = begin(*args, **kwargs)
            return self._state

        self.net.begin = capture  # an instance attribute shadows the method for this step only
        self._handles = [
            unit.register_forward_pre_hook(lambda _m, args, i=i: self._on_unit(i, args[0]))
            for i, unit in enumerate(self._units)
        ]
        self._meter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._meter.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        del self.net.begin
        self._close_module()
        self._meter.release_held()
        self.seen_peak_bytes = self._meter.seen_peak_bytes
        self.peak_bytes = max(self.module_peaks + [self._meter.peak_bytes])
        self._state = None

    def _on_unit(self, i: int, x: torch.Tensor) -> None:
        if _in_backward():  # checkpoint re-running a segment
            first = i != self._last_recomputed + 1
            if first:
                self._run_bytes = 0  # a new segment; the previous one's activations are freed
            if self._recompute is not None:
                self._run_bytes += recompute_increment(self._recompute, i, first)
            self._last_recomputed = i
            self.recompute_bytes = max(self.recompute_bytes, self._run_bytes)
            self._meter.set_unseen(self._run_bytes)
            return
        if self._starts.get(i) != self._module + 1:  # not the next module's first unit
            return
        self._close_module()
        self._module += 1
        self._meter.set_unseen(0)
        self._meter.release_held()
        state = self._state
        self._meter.hold([x] + ([state.image, *state.history.values()] if state is not None else []))
        self._meter.reset_peak()

    def _close_module(self) -> None:
        if self._module >= 0:
            k = self._module
            self.module_peaks[k] = max(self.module_peaks[k], self._meter.peak_bytes)


class CudaPeakMeter:
    """Meter (b): ``with CudaPeakMeter(device) as m: ...``; then ``m.peak_bytes`` (the allocator's peak,
    everything included) and ``m.step_bytes`` (the peak above what was allocated on entry)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.base_bytes = self.peak_bytes = 0

    @property
    def step_bytes(self) -> int:
        return self.peak_bytes - self.base_bytes

    def __enter__(self) -> "CudaPeakMeter":
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base_bytes = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device)


@dataclass(frozen=True)
class UnitSaves:
    """What a training-mode forward of one unit saves for backward, at given shapes."""

    own_bytes: int  # saved storages other than the unit's input
    input_bytes: int  # the input's storage bytes if the unit saves its input, else 0
    saves_output: bool  # whether the unit saves (a view of) its own output


def unit_recompute_bytes(backbone: nn.Module, images: torch.Tensor) -> list[UnitSaves]:
    """``UnitSaves`` of each unit at the shapes ``images`` lead to. Runs copies on blank inputs, so the
    real units and their BatchNorm statistics are untouched; the count does not depend on values."""
    return unit_profile(backbone, images, keep_outputs=False)[0]


def unit_profile(
    backbone: nn.Module, images: torch.Tensor, *, keep_outputs: bool = True
) -> tuple[list[UnitSaves], list[torch.Tensor]]:
    """``UnitSaves`` of each unit (as ``unit_recompute_bytes``) and, with ``keep_outputs``, each unit's
    detached output in the memory layout the unit really produces (Swin's units hand on channels-last
    views of their tokens); without, only one output is alive at a time (large batches on a GPU)."""
    saves, outputs = [], []
    x = torch.zeros_like(images)
    rng = torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else [])
    with rng, torch.enable_grad():  # a unit's dropout draws here leave the run's random numbers as they were
        for unit in backbone.units:
            clone = copy.deepcopy(unit).train()
            with SavedTensorMeter(itertools.chain(clone.parameters(), clone.buffers())) as meter:
                y = clone(x)
            input_bytes = x.untyped_storage().nbytes() if meter.counts(x) else 0
            saves.append(UnitSaves(meter.peak_bytes - input_bytes, input_bytes, meter.counts(y)))
            x = y.detach()
            if keep_outputs:
                outputs.append(x)
            del y, clone
    return saves, outputs


def recompute_increment(saves: list[UnitSaves], i: int, first: bool) -> int:
    """Bytes that recomputing unit i adds to a segment's recomputed activations. The first unit of a
    segment reads the segment input, which checkpoint stores (already counted); a later unit's input is
    new unless the previous unit saved it as its own output."""
    extra = 0 if first or saves[i - 1].saves_output else saves[i].input_bytes
    return saves[i].own_bytes + extra
