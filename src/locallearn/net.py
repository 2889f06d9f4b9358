"""The local network: a backbone cut into K modules, each with its local objective, and the context
encoders its configuration uses — nothing else, so ``net.parameters()`` is the true model size."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from locallearn.config import NetConfig
from locallearn.context import ContextMode, ContextSupply
from locallearn.losses import lambda_schedule
from locallearn.methods import METHODS, Boundary, ForwardState, NetworkLoss
from locallearn.models import Backbone, as_backbone, create_model, is_import_path, model_accepts
from locallearn.split import cuts_from_ends, resolve_ends, show_cut


class LocalNet(nn.Module):
    """A backbone cut into K gradient-isolated modules (docs/methods.md §1).

    Module k runs units ``bounds[k] = [a, b)`` of the backbone. Modules k < K−1 end in their method's local
    objective (``objectives[k]``: auxiliary head, task loss, decoders); the last module's objective is the
    network's own cross-entropy. Between module k and k+1, ``handoff`` detaches module k's output and adds
    ContSup's context (``context``, when the mode supplies any).

    ``LocalNet`` computes; it never steps. The training step (``engine.train_step``) drives it module by
    module — ``handoff`` → ``module_forward`` → ``local_loss`` → backward — so only one module's graph is
    alive at a time. The inference forward (``net(x)``) runs the same modules and hand-offs without the
    objectives.

    Attributes: ``config`` (the resolved ``NetConfig``), ``backbone``, ``ends`` (the unit each module but
    the last ends with), ``bounds``, ``cuts`` (``(stage, block)`` keys of ``ends``), ``boundary_shapes``
    (output shape of modules 0..K−2), ``output_shape`` (the last unit's), ``objectives``, ``context`` (a ``ContextSupply`` or None),
    ``activation_segments`` (recomputed segments per module under activation checkpointing, else 0).
    """

    def __init__(self, config: NetConfig, backbone: Backbone, ends: list[int]) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.ends = [int(e) for e in ends]  # plain ints (a split may compute them in NumPy): JSON and YAML take them
        K = config.num_modules
        bounds = [0] + [e + 1 for e in self.ends] + [backbone.num_units]
        self.bounds = list(zip(bounds[:-1], bounds[1:]))  # units [a, b) of each module
        self.cuts = cuts_from_ends(self.ends, backbone.unit_keys)

        image_size = config.image_size or backbone.image_size
        image_shape = (backbone.in_channels, image_size, image_size)
        self.image_shape = image_shape  # (C, H, W) the network was built for: its shapes, heads and encoders
        self._graph_checked: set[int] = set()  # the objectives whose loss was seen to reach their module's output
        shapes = tuple(backbone.unit_shapes(image_size))
        self.boundary_shapes = [shapes[e] for e in self.ends]
        self.output_shape = shapes[-1]  # the last unit's (the logits' for a classifier), without the batch
        for cut, shape in zip(self.cuts, self.boundary_shapes):
            if len(shape) < 2:
                raise ValueError(
                    f"split: cut {show_cut(cut)!r} outputs vectors {tuple(shape)}, and local objectives need "
                    f"feature maps (C, H, W) or tokens (L, D) at every cut; cut before the flattening or "
                    f"pooling (or use --split with earlier units)."
                )
        weights = lambda_schedule(config.lambdas, K) if config.reconstruct and K > 1 else [(1.0, 1.0)] * (K - 1)
        boundaries = [
            Boundary(index=k, units=(a, b - 1), out_shape=shapes[b - 1],
                     in_shape=image_shape if k == 0 else shapes[a - 1], image_shape=image_shape,
                     unit_shapes=shapes, lambdas=weights[k])
            for k, (a, b) in enumerate(self.bounds[:-1])
        ]
        local = METHODS.get(config.method).objectives(config, boundaries, backbone.num_units) if K > 1 else []
        self.objectives: nn.ModuleList = nn.ModuleList([*local, NetworkLoss()])
        # unit index → whether an objective reads its output (recorded by module_forward into state.taps)
        self._taps = frozenset(u for objective in self.objectives for u in objective.taps)

        mode = ContextMode.parse(config.context)
        self.context = ContextSupply(mode, image_shape=image_shape, boundary_shapes=self.boundary_shapes) if mode.uses_context else None
        for part in [*local, *([self.context] if self.context is not None else [])]:
            backbone.init_auxiliary(part)  # the reference initialises what local learning adds like the backbone

        self._kept_inputs = self._inputs_kept_after_forward()

        self.activation_segments = 0
        if config.activation_checkpointing:
            n = max(b - a for a, b in self.bounds)
            if (config.activation_segments or 0) > n:  # a segment holds one unit at least
                raise ValueError(f"activation_segments: {config.activation_segments} segments of a module of {n} units; "
                                 f"give at most {n} (default ≈ √{n}: {max(1, round(math.sqrt(n)))}).")
            self.activation_segments = config.activation_segments or max(1, round(math.sqrt(n)))
        self.register_load_state_dict_pre_hook(_migrate_state_dict)

    @property
    def num_modules(self) -> int:
        return len(self.bounds)

    @property
    def lambda_schedule(self) -> list[tuple[float, float]]:
        """(λ_xx, λ_xy) of each local module with image reconstruction, else []."""
        if not self.config.reconstruct or self.num_modules < 2:
            return []
        return lambda_schedule(self.config.lambdas, self.num_modules)

    @property
    def lambda_source(self) -> str:
        """Where the λ of image reconstruction came from (a table, the documented default, "config"), or ''."""
        if not self.lambda_schedule:
            return ""
        return self.config.lambda_source or ""

    # --- the pieces the engine drives -------------------------------------------------------------
    def begin(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ForwardState:
        return ForwardState(image=images, labels=labels)

    def module_forward(self, k: int, x: torch.Tensor, state: ForwardState | None = None) -> torch.Tensor:
        """Module k's units on its input ``x``; the outputs of tapped units are recorded in ``state.taps``.

        What is kept past this forward shares storage with ``x`` (the image, ContSup's context history, a
        feature-reconstruction target: detached views, no copies), so a unit that writes it in place would
        change it unseen; that is refused, naming the unit (``_check_unchanged``). Inference tensors
        (``torch.inference_mode``) have no version counter, and are not watched."""
        a, b = self.bounds[k]
        units = list(self.backbone.units[a:b])
        watched = [] if x.is_inference() or k not in self._kept_inputs else [(x, x._version, self._kept_inputs[k])]
        if state is not None and self._taps:
            while units and any(u in self._taps for u in range(a, b)):  # run up to the last tapped unit plainly
                x = units.pop(0)(x)
                self._check_unchanged(watched, a)
                if a in self._taps:
                    state.taps[a] = x.detach()  # shares storage with x: costs nothing
                    if not x.is_inference():
                        watched.append((x, x._version, "feature reconstruction's target"))
                a += 1
        if units and self.activation_segments and self.training and torch.is_grad_enabled():
            x = _recomputed(units, x, self.activation_segments)
            self._check_unchanged(watched, range(a, b))
        else:
            for u, unit in enumerate(units, start=a):
                x = unit(x)
                self._check_unchanged(watched, u)
        return x

    def _check_unchanged(self, watched: list, unit: int | range) -> None:
        """Refuse a write into a watched tensor by ``unit`` (or one of the units of a range, run together)."""
        for tensor, version, why in watched:
            if tensor._version != version:
                names = [repr(show_cut(self.backbone.unit_keys[u])) for u in ([unit] if isinstance(unit, int) else unit)]
                who = f"unit {names[0]}" if len(names) == 1 else f"one of the units {', '.join(names)}"
                raise ValueError(
                    f"{who} changes what it is given in place (e.g. nn.ReLU(inplace=True) on a unit's input), and "
                    f"that tensor is kept as {why}; make the layer out-of-place (inplace=False), or cut the model "
                    f"elsewhere."
                )

    def _inputs_kept_after_forward(self) -> dict[int, str]:
        """Module k → what keeps its input after its forward (words for the error), where something does."""
        kept: dict[int, str] = {}
        K = self.num_modules
        for k in range(K):
            objective = self.objectives[k]
            if k == 0 and self.context is not None:
                kept[k] = "the image ContSup's context encoders read"
            elif 0 < k < K - 1 and self.context is not None and self.context.mode.depth > 0:
                kept[k] = "ContSup's context for the next boundaries"
            if getattr(objective, "feature_decoder", None) is not None and not objective.taps:
                kept.setdefault(k, "feature reconstruction's target")
        if any(getattr(o, "image_decoder", None) is not None for o in self.objectives):
            kept.setdefault(0, "image reconstruction's target")
        return kept

    def handoff(self, k: int, h: torch.Tensor, state: ForwardState) -> torch.Tensor:
        """The input of module k+1 from module k's output h.

        Gradient isolation happens here and only here: h — and every earlier hand-off kept as context —
        is detached, so module k+1's loss cannot reach module k. Training then needs to keep only one
        module's graph alive at a time, which is where local learning's memory saving comes from.
        """
        h = h.detach()
        if self.context is None:
            return h
        out = self.context(k, h, state.image, state.history)
        state.history[k] = out.detach()
        oldest = k + 1 - self.context.mode.depth  # ĥ_j older than the deepest source is never read again
        for j in [j for j in state.history if j < oldest]:
            del state.history[j]
        return out

    def local_loss(
        self, k: int, h: torch.Tensor, inputs: torch.Tensor, state: ForwardState
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Module k's loss from its output h (``inputs``: the module's input), and its metrics as detached
        tensors keyed without the index, ``loss`` among them (the loss itself: what is logged and checked is
        what is back-propagated); the method's objective computes both (checked: a method of one's own that
        returns something else is named in one line, not met by a traceback in the engine)."""
        out = self.objectives[k](h, inputs, state)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor) and out[0].dim() == 0
                and isinstance(out[1], dict) and all(isinstance(v, torch.Tensor) for v in out[1].values())):
            raise ValueError(
                f"method {self.config.method}: objective {k} must return (loss, metrics), a 0-d loss tensor and a dict "
                f"of tensors, got {_described(out)}; see docs/architecture.md, adding a method."
            )
        loss, metrics = out
        if k not in self._graph_checked and h.requires_grad and h.grad_fn is not None:  # once per objective
            if not _reaches(loss, h.grad_fn):
                raise ValueError(
                    f"method {self.config.method}: objective {k}'s loss does not depend on the module's output h (was "
                    f"it computed from h.detach()?), so module {k}'s units would never learn; compute it from h; see "
                    f"docs/architecture.md, adding a method."
                )
            self._graph_checked.add(k)
        return loss, {**{name: value.detach() for name, value in metrics.items()}, "loss": loss.detach()}

    def forward_modules(self, modules: range, x: torch.Tensor, state: ForwardState) -> torch.Tensor:
        """Inference through ``modules`` (consecutive), from the output of module ``modules.start − 1`` (the
        image for module 0): hand-offs and units, no objectives. A pipeline stage runs its own range."""
        for k in modules:
            if k > 0:
                x = self.handoff(k - 1, x, state)
            x = self.module_forward(k, x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: logits through backbone and context path; auxiliary heads and decoders are not run.
        ``images``: (batch, channels, height, width) of the channels and size the network was built for (else
        refused in one line, not with the error of whichever layer meets them first)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a (batch, channels, height, width) tensor, got {got}.")
        if tuple(images.shape[1:]) != tuple(self.image_shape):
            c, h, w = self.image_shape
            raise ValueError(f"images: {images.shape[1]}×{images.shape[2]}×{images.shape[3]} (channels × height × "
                             f"width), but the network was built for {c}×{h}×{w} (its cuts, heads and context "
                             f"encoders are sized for them); resize the images, or build the network for theirs.")
        return self.forward_modules(range(self.num_modules), images, self.begin(images))

    # --- structure ---------------------------------------------------------------------------------
    def module_parts(self, k: int) -> list[nn.Module]:
        """Everything module k's loss trains: its units, its objective, the context encoders feeding it."""
        a, b = self.bounds[k]
        parts: list[nn.Module] = [*self.backbone.units[a:b], self.objectives[k]]
        if k > 0 and self.context is not None:
            parts += self.context.encoders_at(k - 1)
        return parts

    def module_parameters(self, k: int) -> Iterator[nn.Parameter]:
        for part in self.module_parts(k):
            yield from part.parameters()

    def describe(self) -> dict:
        """A summary for logs and run directories."""
        return {
            "cuts": [show_cut(c) for c in self.cuts],
            "units_per_module": [b - a for a, b in self.bounds],
            "parameters": sum(p.numel() for p in self.parameters()),
            "lambda_source": self.lambda_source or None,
            "lambda_schedule": [list(x) for x in self.lambda_schedule] or None,
            "activation_segments": self.activation_segments or None,
        }


# --- activation checkpointing --------------------------------------------------------------------------
@contextlib.contextmanager
def _frozen_batchnorm_stats(modules: list[nn.Module]):
    """Recomputation must not update BatchNorm running statistics a second time: momentum 0 keeps them."""
    bns = [m for unit in modules for m in unit.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _recomputed(units: list[nn.Module], x: torch.Tensor, segments: int) -> torch.Tensor:
    """Run ``units`` in ``segments`` chunks whose activations are recomputed in backward instead of kept
    (non-reentrant ``torch.utils.checkpoint``); the last chunk is not, since its activations are needed at
    once by the backward pass (as torch's checkpoint_sequential)."""
    size = math.ceil(len(units) / segments)
    chunks = [units[i : i + size] for i in range(0, len(units), size)]

    def run(chunk):
        def fn(t):
            for u in chunk:
                t = u(t)
            return t

        return fn

    for chunk in chunks[:-1]:
        x = recompute_in_backward(
            run(chunk),
            x,
            use_reentrant=False,
            context_fn=lambda c=chunk: (contextlib.nullcontext(), _frozen_batchnorm_stats(c)),
        )
    return run(chunks[-1])(x)


# --- checkpoints of earlier releases ---------------------------------------------------------------------
_OLD_PARTS = {"aux_heads": "head", "image_decoders": "image_decoder", "feature_decoders": "feature_decoder"}


def _migrate_state_dict(module, state_dict, prefix, *args) -> None:
    """Weights saved before local objectives were modules (``aux_heads.k.*``, ``image_decoders.k.*``,
    ``feature_decoders.k.*``) load into ``objectives.k.{head, image_decoder, feature_decoder}.*``."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        parts = key[len(prefix):].split(".", 2)
        if len(parts) == 3 and parts[0] in _OLD_PARTS:
            state_dict[f"{prefix}objectives.{parts[1]}.{_OLD_PARTS[parts[0]]}.{parts[2]}"] = state_dict.pop(key)


def old_parameter_order(net: LocalNet) -> list[int]:
    """For each parameter as an earlier release ordered ``net.parameters()`` (backbone, every head, every
    image decoder, every feature decoder, context), its index in today's order: how an optimizer state
    saved then maps onto today's parameters."""
    names = [name for name, _ in net.named_parameters()]
    rank = {"head": 1, "image_decoder": 2, "feature_decoder": 3}

    def key(i: int):
        parts = names[i].split(".")
        if parts[0] == "objectives":
            return (rank[parts[2]], int(parts[1]), i)
        return (0 if parts[0] == "backbone" else 4, 0, i)

    return sorted(range(len(names)), key=key)


# --- construction --------------------------------------------------------------------------------------
def check_logits(net: LocalNet) -> None:
    """A training run's network must give one logit per class of its data (``config.num_classes``: the
    dataset's, or what training from Python was told); else training stops at the first batch whose labels
    reach past the classifier. (``locallearn.build`` checks it where num_classes or a dataset is given;
    without them it takes the model's width.)"""
    classes, last = net.config.num_classes, tuple(net.output_shape)
    if last != (classes,):
        width = last[0] if len(last) == 1 else last
        raise ValueError(
            f"num_classes: the model's last unit gives {width} logits but the run has num_classes={classes} (the "
            f"data's classes); make the two agree (a factory that takes num_classes receives it)."
        )


def check_batch(net: LocalNet, batch_size: int, fix: str = "give --batch-size 2 or more") -> None:
    """A network with a BatchNorm1d (DGL's heads, a user's classifier) cannot train on one image at a time:
    BatchNorm normalises each feature over the batch, and one value per feature has no spread; refused
    before anything is written, instead of failing in the first step. Nor can the contrastive local loss,
    which is 0 without a pair of images in the batch."""
    if batch_size < 2:
        where = next((name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm1d)), None)
        if where is not None:
            raise ValueError(f"batch_size: the network normalises features over the batch (BatchNorm1d at {where}), "
                             f"which needs at least 2 images per training batch, not {batch_size}; {fix}.")
        if net.config.local_loss == "contrast" and net.num_modules > 1:  # its loss would be 0: nothing learns
            raise ValueError(f"batch_size: the contrastive local loss pulls together images of a class within a "
                             f"batch, and a batch of {batch_size} has no pair (its loss is 0, so the local modules "
                             f"would not learn); {fix}.")


def _reaches(loss: torch.Tensor, node: object) -> bool:
    """Whether back-propagating ``loss`` passes through autograd node ``node`` (a walk of its graph that stops
    there: the few nodes of a head, or at most one module's)."""
    seen, frontier = set(), [loss.grad_fn]
    while frontier:
        current = frontier.pop()
        if current is None or current in seen:
            continue
        if current is node:
            return True
        seen.add(current)
        frontier += [nxt for nxt, _ in current.next_functions]
    return False


def _described(value: object) -> str:
    """What an objective returned, briefly: ``a Tensor of shape (4,)``, ``(Tensor (), dict of float)``."""
    def one(v: object) -> str:
        if isinstance(v, torch.Tensor):
            return f"Tensor {tuple(v.shape)}"
        if isinstance(v, dict):
            kinds = sorted({type(x).__name__ for x in v.values()})
            return f"dict of {', '.join(kinds) or 'nothing'}"
        return type(v).__name__
    return f"({', '.join(one(v) for v in value)})" if isinstance(value, tuple) else f"a {one(value)}"


def build_net(config: NetConfig, model: nn.Module | None = None) -> LocalNet:
    """The network of ``config``. ``model``: a model object to cut (a ``Backbone`` or an ``nn.Sequential``);
    by default the model ``config.model`` names, built from its factory with ``model_kwargs`` and whichever of
    ``num_classes``, ``image_size`` and ``in_channels`` the factory takes."""
    registered = model is None and not is_import_path(config.model)  # built and tested here: its units chain
    if model is None:
        kwargs = dict(config.model_kwargs)
        wanted = {"num_classes": config.num_classes, "image_size": config.image_size, "in_channels": config.in_channels}
        for option, value in wanted.items():
            if value is not None and model_accepts(config.model, option):
                kwargs[option] = value  # NetConfig refuses them in model_kwargs: one value, the recorded one
        model = create_model(config.model, **kwargs)
    backbone = as_backbone(model, image_size=config.image_size, in_channels=config.in_channels, chain=not registered)
    if backbone.in_channels != config.in_channels:
        raise ValueError(
            f"in_channels: the backbone takes {backbone.in_channels}-channel images but the config says "
            f"{config.in_channels}; make them agree (model_kwargs or the dataset)."
        )
    return LocalNet(config, backbone, resolve_ends(config, backbone))
