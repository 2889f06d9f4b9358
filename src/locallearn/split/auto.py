"""The computed split (``auto``, and ``balanced`` where the papers have no table): cut the units into K
modules so that the largest module's peak activation memory is least (docs/methods.md §2.2, our choice).

``balanced_ends`` is an exact dynamic programme over a cost model; ``split_costs`` measures the model's terms.
The cost of a module is meant to be what the benchmarks measure while it trains (``memory.StepMemoryMeter``):
everything its forward saves for backward, plus the tensors the step holds. For module m spanning units i..j,
fed by boundary b = m − 1 after unit e = i − 1 (boundary b − 1 after unit p):

    cost(m, i, j) = Σ_{u=i..j} unit[u] + start[b](e, p) + objective(i, j)

- ``unit[u]``: the bytes unit u saves for backward other than its input, plus its input where it saves it
  and unit u − 1 does not already save that tensor as its own output, so that a tensor two units share is
  counted once (``memory.UnitSaves``).
- ``start[b](e, p)``: what the module holds before its first unit runs. The hand-off ĥ_b (its input,
  which the step holds) less the part of ``unit[i]`` that is that same input; plus ContSup's context
  encoders at boundary b (docs/methods.md §5), which run at the start of the module they feed and belong to
  its graph: Enc_b(x) at the image's resolution (E modes) and each ResEnc_{b,r} with its source ĥ_j (Rn
  modes; the source is saved by the encoder or held in the context history, counted once either way).
  A source that is the image (j = −1, boundaries b < n) is exact, and so is ĥ_{b−1}, the one source of
  R1 and R1E: its shape is that of the previous boundary, after unit p, which the dynamic programme
  tracks. Older sources (ĥ_{b−2}, ... of Rn with n > 1) depend on earlier cuts still; they are priced at
  ĥ_{b−1}'s shape — exact within a stage, an underestimate when a stage boundary lies between (the
  older source then has more pixels). This is the one approximation of the model.
- ``objective(i, j)``: the module's local objective (``Method.build_objectives``: auxiliary head, task loss,
  decoders and their targets), measured by running it on unit j's real output, as ``LocalNet.local_loss``
  does; plus that output where the objective saves it and unit j does not, and a tapped unit output (an
  objective reading one, e.g. FeatRecon's module 0) where no unit of the module keeps it. The module's
  input — FeatRecon's target — is held by the step and priced in ``start``. The last module has none: its
  classifier is a unit. Any method's objective is priced this way, with no code of its own here.

Not modelled: the input image, which the step holds during every module (a constant, it moves no cut).
Everything is measured on blank inputs at batch 2 (saved bytes are linear in the batch, up to
BatchNorm's per-channel statistics), on copies of the units, and cached by shape. Measuring leaves the
global (CPU) RNG as it found it (``_keeps_rng``), so a computed split initialises the network exactly
as the same cuts given explicitly.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from locallearn.context import ContextMode, ImageEncoder, ResEncoder
from locallearn.memory import SavedTensorMeter, unit_profile
from locallearn.methods import METHODS, Boundary, ForwardState

if TYPE_CHECKING:
    from locallearn.config import NetConfig
    from locallearn.models import Backbone

BATCH = 2  # blank-input batch of every measurement


def balanced_ends(
    unit_bytes: Sequence[float],
    end_bytes: Sequence[float],
    num_modules: int,
    *,
    span_bytes: Callable[[int, int], float] | None = None,
    start_bytes: Callable[[int, int, int], float] | None = None,
) -> list[int]:
    """Contiguous partition minimising the largest module cost (exact, by dynamic programming).

    The cost of module m spanning units i..j is sum(unit_bytes[i..j]) + end_bytes[j] + span_bytes(i, j)
    + start_bytes(m−1, i−1, p), with p the unit module m−2 ends with (−1 when m = 1):

    - ``end_bytes[j]``: what the local objective attached after unit j costs (auxiliary head, decoder). The
      last module has no auxiliary objective, so its end cost is 0 (pass end_bytes[-1] = 0);
    - ``span_bytes(i, j)``: what depends on both ends of a local module (FeatRecon's decoder maps unit j's
      output back to module i's input); it is not charged to the last module;
    - ``start_bytes(b, e, p)``: what boundary b, after unit e, costs the module it feeds (never the first):
      its held input and ContSup's context encoders, which run at the start of that module and may read
      the previous boundary's tensor, after unit p (ResEnc of Rn modes) — hence the third argument.

    The dynamic programme runs over (modules, last end, previous end): O(K·n³) comparisons, vectorised
    over the previous end. ``split_cost`` measures the terms; see it for the model.
    """
    n, K = len(unit_bytes), num_modules
    prefix = np.concatenate([[0.0], np.cumsum(unit_bytes)])

    def own(i: int, j: int) -> float:  # units i..j inclusive, without the start cost
        extra = span_bytes(i, j) if span_bytes is not None and j < n - 1 else 0.0
        return prefix[j + 1] - prefix[i] + end_bytes[j] + extra

    def starts(b: int, e: int) -> np.ndarray:  # start cost of boundary b after unit e, by p + 1 (p = −1..e−1)
        out = np.zeros(e + 1)
        if start_bytes is not None:
            for p in range(max(b - 1, -1), e):  # b boundaries before: module b−1 ends at p ≥ b−1
                out[p + 1] = start_bytes(b, e, p)
        return out

    inf = float("inf")
    # best[k][j][p + 1]: minimal largest cost covering units 0..j with k modules, the k-th ending at j and
    # the (k−1)-th at p (p = −1 for k = 1); arg: the end of module k−2 that achieves it.
    best = np.full((K + 1, n, n + 1), inf)
    arg = np.full((K + 1, n, n + 1), -1, dtype=int)
    for j in range(n):
        best[1][j][0] = own(0, j)
    for k in range(2, K + 1):
        b = k - 2  # the boundary before module k (1-based): after unit i
        start_of = {i: starts(b, i) for i in range(k - 2, n - 1)}
        for j in range(k - 1, n):
            for i in range(k - 2, j):  # module k spans units i+1..j
                c = np.maximum(best[k - 1][i][: i + 1], own(i + 1, j) + start_of[i])
                q = int(np.argmin(c))
                best[k][j][i + 1], arg[k][j][i + 1] = c[q], q - 1
    if not np.isfinite(best[K][n - 1]).any():  # an infinite cost is a cut that may not be made (``split_costs``)
        raise ValueError(
            f"split: no way to cut this model into {K} modules leaves feature maps (C, H, W) or tokens (L, D) at "
            f"every cut, which local objectives need (units after a flattening or pooling output vectors); use "
            f"fewer modules, or a model with more convolutional or token units."
        )
    ends, j, state = [], n - 1, int(np.argmin(best[K][n - 1]))
    for k in range(K, 1, -1):
        i = state - 1
        ends.append(i)
        state, j = arg[k][j][state] + 1, i
    return sorted(ends)


def _keeps_rng(fn: Callable) -> Callable:
    """Run ``fn`` on a fork of the CPU RNG: the throwaway heads, decoders and encoders the measurements
    build (and the units' random layers, e.g. Swin's drop path) must not move the global RNG that
    ``LocalNet`` then initialises its own heads from."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper


@dataclass
class SplitCosts:
    """The terms of the cost model (module docstring), in bytes per sample."""

    unit_bytes: list[float]
    start_bytes: Callable[[int, int, int], float] | None  # (boundary b, unit e it follows, previous boundary's unit p)
    objective_bytes: Callable[[int, int], float]  # (i, j) → bytes of a local module's objective

    @_keeps_rng  # start_bytes and objective_bytes measure lazily
    def ends(self, num_modules: int) -> list[int]:
        return balanced_ends(
            self.unit_bytes, [0.0] * len(self.unit_bytes), num_modules, start_bytes=self.start_bytes,
            span_bytes=self.objective_bytes,
        )

    @_keeps_rng
    def module_costs(self, bounds: list[tuple[int, int]]) -> list[float]:
        """The modelled cost of each module of a split given as unit ranges [a, b)."""
        n = len(self.unit_bytes)
        out = []
        for m, (a, b) in enumerate(bounds):
            j = b - 1
            cost = sum(self.unit_bytes[a:b])
            if m > 0 and self.start_bytes is not None:
                cost += self.start_bytes(m - 1, a - 1, bounds[m - 1][0] - 1)
            if j < n - 1:
                cost += self.objective_bytes(a, j)
            out.append(cost)
        return out


@_keeps_rng
def split_costs(config: NetConfig, backbone: Backbone) -> SplitCosts:
    """The cost model's terms for ``config``'s network on ``backbone``, in bytes per sample."""
    image_size = config.image_size or backbone.image_size
    image = torch.zeros(BATCH, backbone.in_channels, image_size, image_size)
    saves, outputs = unit_profile(backbone, image)
    n = len(saves)
    # unit u's input, where unit u saves it and unit u−1 did not already save it as its own output
    input_term = [0] + [saves[u].input_bytes if not saves[u - 1].saves_output else 0 for u in range(1, n)]
    unit_bytes = [(s.own_bytes + t) / BATCH for s, t in zip(saves, input_term)]
    context = context_cost(config.context, image)

    def start_bytes(boundary: int, e: int, p: int) -> float:
        if outputs[e].dim() < 3:  # no cut after a unit that outputs vectors (LocalNet refuses one)
            return math.inf
        held = _nbytes(outputs[e]) - input_term[e + 1]  # the hand-off, counted once
        source = tuple(outputs[p].shape[1:]) if p >= 0 else None  # ĥ of the previous boundary
        return (held + context(boundary, tuple(outputs[e].shape[1:]), source)) / BATCH

    keeps_input = [s.input_bytes > 0 for s in saves]
    objective = objective_cost(config, image, outputs, saves_output=[s.saves_output for s in saves],
                               keeps_input=keeps_input)
    return SplitCosts(unit_bytes, start_bytes, objective)


def objective_cost(
    config: NetConfig,
    image: torch.Tensor,
    outputs: Sequence[torch.Tensor],
    *,
    saves_output: Sequence[bool],
    keeps_input: Sequence[bool],
) -> Callable[[int, int], float]:
    """``cost(i, j)``: the bytes per sample the objective of a local module spanning units i..j adds (module
    docstring), from ``outputs`` (each unit's output at batch ``BATCH``, real memory layout). The method's
    objective is built for that module and run once per distinct set of input shapes."""
    method = METHODS.get(config.method)
    unit_shapes = tuple(tuple(o.shape[1:]) for o in outputs)
    image_shape = tuple(image.shape[1:])
    by_module: dict[tuple[int, int], float] = {}
    by_shapes: dict[tuple, tuple[float, bool]] = {}

    def cost(i: int, j: int) -> float:
        if len(unit_shapes[j]) < 2:  # a local module cannot end with vectors (LocalNet refuses the cut)
            return math.inf
        if (i, j) not in by_module:
            boundary = Boundary(index=0, units=(i, j), out_shape=unit_shapes[j],
                                in_shape=image_shape if i == 0 else unit_shapes[i - 1], image_shape=image_shape,
                                unit_shapes=unit_shapes)
            objective = method.objectives(config, [boundary], len(unit_shapes))[0].train()
            h, inputs = outputs[j], (image if i == 0 else outputs[i - 1])
            key = (tuple(h.shape), h.stride(), tuple(inputs.shape), tuple((u, unit_shapes[u]) for u in objective.taps))
            if key not in by_shapes:
                by_shapes[key] = _measure(objective, h, inputs, image, outputs)
            nbytes, keeps_h = by_shapes[key]
            if keeps_h and not saves_output[j]:  # unit j's output, saved by the objective only
                nbytes += _nbytes(h)
            for u in objective.taps:  # a tapped output no unit of the module keeps (u + 1 saves its input)
                if not (u + 1 <= j and keeps_input[u + 1]):
                    nbytes += _nbytes(outputs[u])
            by_module[(i, j)] = nbytes / BATCH
        return by_module[(i, j)]

    return cost


def _measure(
    objective: torch.nn.Module, h: torch.Tensor, inputs: torch.Tensor, image: torch.Tensor,
    outputs: Sequence[torch.Tensor],
) -> tuple[float, bool]:
    """Bytes the objective saves for backward on output ``h`` other than ``h`` itself, its parameters and its
    inputs (the module input, the image and tapped outputs, which the step holds), and whether it saves ``h``."""
    h = h.detach().requires_grad_(True)  # same storage as the unit's output
    taps = {u: outputs[u] for u in objective.taps}
    state = ForwardState(image=image, labels=torch.zeros(h.shape[0], dtype=torch.long), taps=dict(taps))
    held = itertools.chain(objective.parameters(), objective.buffers(), [inputs, image], taps.values())
    with SavedTensorMeter(held) as meter:
        loss, _ = objective(h, inputs, state)
        keeps_h = meter.counts(h)
        del loss
    return float(meter.peak_bytes - (_nbytes(h) if keeps_h else 0)), keeps_h


def context_cost(context: str, image: torch.Tensor) -> Callable[[int, tuple, tuple | None], float]:
    """``cost(b, shape, source)``: the bytes ContSup's encoders at boundary b (output ``shape``) add to the
    module they feed, their sources ĥ_j (j ≥ 0) included, priced at ``source``: the shape of boundary b−1
    (module docstring); 0 for R0."""
    mode = ContextMode.parse(context)
    cache: dict[tuple, float] = {}

    def encoder(kind: str, src_shape: tuple[int, ...], shape: tuple[int, ...]) -> float:
        key = (kind, src_shape, shape)
        if key not in cache:
            module = ImageEncoder(src_shape[0], shape) if kind == "image" else ResEncoder(src_shape[0], shape)
            src = torch.zeros(BATCH, *src_shape)
            with SavedTensorMeter([*module.parameters(), *module.buffers(), src]) as meter:
                out = module.train()(src)
                del out
            cache[key] = float(meter.peak_bytes)
        return cache[key]

    image_shape = tuple(image.shape[1:])

    def cost(boundary: int, shape: tuple[int, ...], source: tuple[int, ...] | None) -> float:
        if not mode.uses_context or len(shape) != 3:
            return 0.0
        total = encoder("image", image_shape, shape) if mode.image else 0.0
        for j in mode.sources(boundary):
            if j < 0:  # the image: held by the step anyway
                total += encoder("res", image_shape, shape)
            else:  # ĥ_j: saved by its encoder or held in the history, counted once either way
                src = source if source is not None and len(source) == 3 else shape
                total += encoder("res", src, shape) + BATCH * math.prod(src) * 4  # float32
        return total

    return cost


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()
