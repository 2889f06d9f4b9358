"""What the computed split minimises: each local module's peak activation bytes (METHODS.md 2.2, "our choice").

``split="auto"`` (and ``balanced`` where the papers have no table) cuts the units into K modules so that
the largest module costs least (``split.balanced_ends``, an exact dynamic programme). The cost of a module
is meant to be what the benchmarks measure while it trains (``bench.meters.StepMemoryMeter``): everything
its forward saves for backward, plus the tensors the step holds. For module m spanning units i..j, fed by
boundary b = m − 1 after unit e = i − 1 (boundary b − 1 after unit p):

    cost(m, i, j) = Σ_{u=i..j} unit[u] + start[b](e, p) + end[j] + span(i, j)

- ``unit[u]``: the bytes unit u saves for backward other than its input, plus its input where it saves it
  and unit u − 1 does not already save that tensor as its own output, so that a tensor two units share is
  counted once (``bench.meters.UnitSaves``).
- ``start[b](e, p)``: what the module holds before its first unit runs. The hand-off ĥ_b (its input,
  which the step holds) less the part of ``unit[i]`` that is that same input; plus ContSup's context
  encoders at boundary b (METHODS.md 5), which run at the start of the module they feed and belong to
  its graph: Enc_b(x) at the image's resolution (E modes) and each ResEnc_{b,r} with its source ĥ_j (Rn
  modes; the source is saved by the encoder or held in the context history, counted once either way).
  A source that is the image (j = −1, boundaries b < n) is exact, and so is ĥ_{b−1}, the one source of
  R1 and R1E: its shape is that of the previous boundary, after unit p, which the dynamic programme
  tracks. Older sources (ĥ_{b−2}, ... of Rn with n > 1) depend on earlier cuts still; they are priced at
  ĥ_{b−1}'s shape — exact within a stage, an underestimate when a stage boundary lies between (the
  older source then has more pixels). This is the one approximation of the model.
- ``end[j]``: the local objective after unit j — auxiliary head, task loss, InfoPro's image decoder and
  its reconstruction loss (BCE) with its target — measured by running them as ``LocalNet.local_loss``
  does on unit j's real output; plus that output where the objective saves it and unit j does not. The
  last module has none (0): its classifier is a unit.
- ``span(i, j)``: FeatRecon's feature decoder with its MSE (``featrecon.decoder_span_cost``).

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
from typing import Callable

import torch

from locallearn import split as splits
from locallearn.bench.meters import SavedTensorMeter, unit_profile
from locallearn.config import NetConfig
from locallearn.context import ContextMode, ImageEncoder, ResEncoder
from locallearn.decoders import ImageDecoder
from locallearn.heads import create_head
from locallearn.losses import LOCAL_LOSSES, reconstruction_bce
from locallearn.models import Backbone

BATCH = 2  # blank-input batch of every measurement


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
    end_bytes: list[float]  # 0 for the last unit
    start_bytes: Callable[[int, int, int], float] | None  # (boundary b, unit e it follows, previous boundary's unit p)
    span_bytes: Callable[[int, int], float] | None  # (i, j) → bytes, local modules only

    @_keeps_rng  # start_bytes and span_bytes measure lazily
    def ends(self, num_modules: int) -> list[int]:
        return splits.balanced_ends(
            self.unit_bytes, self.end_bytes, num_modules, start_bytes=self.start_bytes, span_bytes=self.span_bytes
        )

    @_keeps_rng
    def module_costs(self, bounds: list[tuple[int, int]]) -> list[float]:
        """The modelled cost of each module of a split given as unit ranges [a, b)."""
        n = len(self.unit_bytes)
        out = []
        for m, (a, b) in enumerate(bounds):
            j = b - 1
            cost = sum(self.unit_bytes[a:b]) + self.end_bytes[j]
            if m > 0 and self.start_bytes is not None:
                cost += self.start_bytes(m - 1, a - 1, bounds[m - 1][0] - 1)
            if j < n - 1 and self.span_bytes is not None:
                cost += self.span_bytes(a, j)
            out.append(cost)
        return out


@_keeps_rng
def split_costs(config: NetConfig, backbone: Backbone) -> SplitCosts:
    """The cost model's terms for ``config``'s network on ``backbone``, in bytes per sample."""
    image_size = config.image_size or backbone.image_size
    image = torch.zeros(BATCH, backbone.in_channels, image_size, image_size)
    saves, outputs = unit_profile(backbone, image)
    n = len(saves)
    # unit u's input, where unit u saves it and unit u−1 did not already save it as its output
    input_term = [0] + [saves[u].input_bytes if not saves[u - 1].saves_output else 0 for u in range(1, n)]
    unit_bytes = [(s.own_bytes + t) / BATCH for s, t in zip(saves, input_term)]

    objective = objective_cost(config, image_size)
    end_bytes = []
    for j in range(n - 1):
        nbytes, keeps_output = objective(outputs[j])
        if keeps_output and not saves[j].saves_output:  # unit j's output, saved by the objective only
            nbytes += _nbytes(outputs[j])
        end_bytes.append(nbytes / BATCH)
    end_bytes.append(0.0)

    context = context_cost(config.context, image)

    def start_bytes(boundary: int, e: int, p: int) -> float:
        held = _nbytes(outputs[e]) - input_term[e + 1]  # the hand-off, counted once
        source = tuple(outputs[p].shape[1:]) if p >= 0 else None  # ĥ of the previous boundary
        return (held + context(boundary, tuple(outputs[e].shape[1:]), source)) / BATCH

    span = None
    if config.feature_decoder is not None:
        from locallearn.featrecon import decoder_span_cost

        kept = [s.input_bytes > 0 for s in saves]
        span = decoder_span_cost(config.feature_decoder, backbone, image_size, profile=(outputs, kept))
    return SplitCosts(unit_bytes, end_bytes, start_bytes, span)


def objective_cost(config: NetConfig, image_size: int) -> Callable[[torch.Tensor], tuple[float, bool]]:
    """``cost(h)``: the bytes a local module's objective on output ``h`` saves for backward other than
    ``h`` itself, and whether it saves ``h`` — head and task loss, image decoder and BCE as
    ``LocalNet.local_loss`` runs them (FeatRecon's decoder is ``span``). Cached by shape and layout."""
    loss = LOCAL_LOSSES.get(config.local_loss)
    head_dim = loss.head_dim(config.num_classes)
    cache: dict[tuple, tuple[float, bool]] = {}

    def cost(h: torch.Tensor) -> tuple[float, bool]:
        key = (tuple(h.shape), h.stride())
        if key not in cache:
            shape = tuple(h.shape[1:])
            parts = [create_head(config.aux_head, shape, head_dim)]
            if config.reconstruct and len(shape) == 3:
                parts.append(ImageDecoder(shape[0], image_size))
            h = h.detach().requires_grad_(True)  # same storage as the unit's output
            labels = torch.zeros(h.shape[0], dtype=torch.long)
            params = itertools.chain.from_iterable(itertools.chain(p.parameters(), p.buffers()) for p in parts)
            with SavedTensorMeter(params) as meter:
                z = parts[0].train()(h)
                total = loss.score(z, labels, temperature=config.temperature)
                if len(parts) > 1:
                    # the un-normalised image, which LocalNet.denormalize computes anew for every module
                    target = torch.zeros(h.shape[0], 3, image_size, image_size)
                    total = total + reconstruction_bce(parts[1].train()(h), target)
                keeps_input = meter.counts(h)
                del z, total
            nbytes = meter.peak_bytes - (_nbytes(h) if keeps_input else 0)
            cache[key] = (float(nbytes), keeps_input)
        return cache[key]

    return cost


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


