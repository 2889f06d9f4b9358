"""The local network: a backbone cut into K modules, with the auxiliary heads, decoders and context
encoders its configuration uses — and nothing else, so ``net.parameters()`` is the true model size.

``LocalNet`` computes; it never steps. The training step (``engine.train_step``) drives it module by
module: ``module_forward`` → ``local_loss`` → backward → ``handoff``. The inference forward (``net(x)``)
runs the same modules and hand-offs without heads or decoders.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from locallearn import split as splits
from locallearn.config import NetConfig
from locallearn.context import ContextMode, ContextSupply
from locallearn.decoders import FEATURE_DECODERS, ImageDecoder, feature_mse
from locallearn.heads import create_head
from locallearn.losses import LOCAL_LOSSES, lambda_schedule, lookup_lambdas, reconstruction_bce
from locallearn.models import Backbone, create_model

if TYPE_CHECKING:
    from locallearn.split_cost import SplitCosts


@dataclass
class ForwardState:
    """What the hand-offs of one forward pass share: the input image and the context history ĥ_j."""

    image: torch.Tensor
    history: dict[int, torch.Tensor] = field(default_factory=dict)
    # FeatRecon's target for module 0: the first unit's output (the patch embedding), detached, as computed
    # by module 0's own forward (``module_forward(0, x, state)``), so it need not be recomputed.
    embedding: torch.Tensor | None = None


class LocalNet(nn.Module):
    def __init__(self, config: NetConfig, backbone: Backbone, ends: list[int]) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.ends = list(ends)  # module k ends with unit ends[k] (k < K−1)
        K = config.num_modules
        bounds = [0] + [e + 1 for e in self.ends] + [backbone.num_units]
        self.bounds = list(zip(bounds[:-1], bounds[1:]))  # units [a, b) of each module
        self.cuts = splits.cuts_from_ends(self.ends, backbone.unit_keys)

        image_size = config.image_size or backbone.image_size
        shapes = backbone.unit_shapes(image_size)
        self.boundary_shapes = [shapes[e] for e in self.ends]  # output shape of modules 0..K−2
        self.loss = LOCAL_LOSSES.get(config.local_loss)
        head_dim = self.loss.head_dim(config.num_classes)
        self.aux_heads = nn.ModuleList([create_head(config.aux_head, s, head_dim) for s in self.boundary_shapes])

        self.image_decoders = None
        self.lambda_schedule: list[tuple[float, float]] = []
        self.lambda_source = ""
        if config.reconstruct and K > 1:
            self.image_decoders = nn.ModuleList([ImageDecoder(s[0], image_size) for s in self.boundary_shapes])
            if config.lambdas is not None:
                lambdas, self.lambda_source = config.lambdas, "config"
            else:
                # the memory-balanced λ belong to the papers' memory-balanced cuts, not to a computed split
                balanced = config.split == "balanced" and self.cuts == splits.table_cuts(
                    "balanced", config.model, K, image_size
                )
                lambdas, self.lambda_source = lookup_lambdas(config.model, config.dataset, K, balanced=balanced)
            self.lambda_schedule = lambda_schedule(lambdas, K)

        self.feature_decoders = None
        if config.feature_decoder is not None and K > 1:
            image_shape = (backbone.in_channels, image_size, image_size)
            first_input = shapes[0] if self._first_target_is_embedding() else image_shape
            in_shapes = [first_input] + self.boundary_shapes
            # module k reconstructs its own input: the previous module's output, or for k = 0 the output
            # of the first unit (the patch embedding), which is why FeatRecon's first module starts after it.
            factory = FEATURE_DECODERS.get(config.feature_decoder)
            self.feature_decoders = nn.ModuleList(
                [factory(self.boundary_shapes[k], in_shapes[k]) for k in range(K - 1)]
            )

        mode = ContextMode.parse(config.context)
        self.context = None
        if mode.uses_context:
            self.context = ContextSupply(
                mode, image_shape=(backbone.in_channels, image_size, image_size), boundary_shapes=self.boundary_shapes
            )

        mean = torch.tensor(config.image_mean or (0.0,) * 3).view(1, -1, 1, 1)
        std = torch.tensor(config.image_std or (1.0,) * 3).view(1, -1, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

        self.checkpoint_segments = 0
        if config.checkpoint:
            n = max(b - a for a, b in self.bounds)
            self.checkpoint_segments = min(n, config.checkpoint_segments or max(1, round(math.sqrt(n))))

    def _first_target_is_embedding(self) -> bool:
        """Whether module 0's feature target is its first unit's output (it has more units than that one)."""
        return self.bounds[0][1] > 1

    def _reconstructs_embedding(self) -> bool:
        return self.feature_decoders is not None and self._first_target_is_embedding()

    @property
    def num_modules(self) -> int:
        return len(self.bounds)

    # --- the pieces the engine drives -------------------------------------------------------------
    def begin(self, images: torch.Tensor) -> ForwardState:
        return ForwardState(image=images)

    def module_forward(self, k: int, x: torch.Tensor, state: ForwardState | None = None) -> torch.Tensor:
        a, b = self.bounds[k]
        units = self.backbone.units[a:b]
        if k == 0 and state is not None and self._reconstructs_embedding():
            x = units[0](x)
            state.embedding = x.detach()  # module 0's feature target; shares storage with x, costs nothing
            units = units[1:]
        if self.checkpoint_segments and self.training and torch.is_grad_enabled():
            return _checkpointed(units, x, self.checkpoint_segments)
        for unit in units:
            x = unit(x)
        return x

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
        self,
        k: int,
        h: torch.Tensor,
        labels: torch.Tensor,
        *,
        images: torch.Tensor,
        inputs: torch.Tensor,
        state: ForwardState | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Module k's loss from its output h, and its metrics (detached tensors) keyed without the index.

        The last module uses the network's own classifier and cross-entropy; modules k < K−1 their
        auxiliary head's task loss, plus the image (InfoPro) or feature (FeatRecon) reconstruction.
        ``state``: the forward's state, whose ``embedding`` is module 0's FeatRecon target.
        """
        if k == self.num_modules - 1:
            loss = F.cross_entropy(h, labels)
            return loss, {"loss": loss.detach(), "acc": _accuracy(h, labels)}
        z = self.aux_heads[k](h)
        task = self.loss.score(z, labels, temperature=self.config.temperature)
        metrics = {"task": task.detach()}
        if self.loss.gives_logits:
            metrics["acc"] = _accuracy(z, labels)
        loss = task
        if self.image_decoders is not None:
            rec = reconstruction_bce(self.image_decoders[k](h), self.denormalize(images))
            lam_xx, lam_xy = self.lambda_schedule[k]
            loss = lam_xx * rec + lam_xy * task
            metrics["rec"] = rec.detach()
        if self.feature_decoders is not None:
            target = inputs.detach()
            if k == 0 and self._reconstructs_embedding():  # the patch embedding, see __init__
                if state is not None and state.embedding is not None:
                    target, state.embedding = state.embedding, None  # consumed: not kept alive past module 0
                else:  # a caller that drove module_forward without the state: recompute it, untracked
                    with torch.no_grad():
                        target = self.backbone.units[0](inputs)
            feat = feature_mse(self.feature_decoders[k], h, target)
            loss = loss + self.config.feature_weight * feat
            metrics["feat"] = feat.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """The un-normalised [0, 1] image, the target of image reconstruction."""
        return (images * self.image_std + self.image_mean).clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: logits through backbone and context path; auxiliary heads and decoders are not run."""
        state = self.begin(images)
        x = images
        for k in range(self.num_modules):
            h = self.module_forward(k, x)
            x = self.handoff(k, h, state) if k < self.num_modules - 1 else h
        return x

    # --- structure ---------------------------------------------------------------------------------
    def module_parts(self, k: int) -> list[nn.Module]:
        """Everything module k's loss trains: its units, its head and decoders, the encoders feeding it."""
        a, b = self.bounds[k]
        parts: list[nn.Module] = list(self.backbone.units[a:b])
        if k < self.num_modules - 1:
            parts.append(self.aux_heads[k])
            for decoders in (self.image_decoders, self.feature_decoders):
                if decoders is not None:
                    parts.append(decoders[k])
        if k > 0 and self.context is not None:
            parts += self.context.encoders_at(k - 1)
        return parts

    def module_parameters(self, k: int) -> Iterator[nn.Parameter]:
        for part in self.module_parts(k):
            yield from part.parameters()

    def describe(self) -> dict:
        """A summary for logs and run directories."""
        return {
            "cuts": [list(c) for c in self.cuts],
            "units_per_module": [b - a for a, b in self.bounds],
            "parameters": sum(p.numel() for p in self.parameters()),
            "lambda_source": self.lambda_source or None,
            "lambda_schedule": [list(x) for x in self.lambda_schedule] or None,
            "checkpoint_segments": self.checkpoint_segments or None,
        }


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).float().mean()


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


def _checkpointed(units: nn.ModuleList, x: torch.Tensor, segments: int) -> torch.Tensor:
    """Run ``units`` in ``segments`` checkpointed chunks (non-reentrant); the last chunk is not checkpointed,
    since its activations are needed at once by the backward pass (as torch's checkpoint_sequential)."""
    units = list(units)
    size = math.ceil(len(units) / segments)
    chunks = [units[i : i + size] for i in range(0, len(units), size)]

    def run(chunk):
        def fn(t):
            for u in chunk:
                t = u(t)
            return t

        return fn

    for chunk in chunks[:-1]:
        x = checkpoint(
            run(chunk),
            x,
            use_reentrant=False,
            context_fn=lambda c=chunk: (contextlib.nullcontext(), _frozen_batchnorm_stats(c)),
        )
    return run(chunks[-1])(x)


# --- construction --------------------------------------------------------------------------------------
def resolve_ends(config: NetConfig, backbone: Backbone, costs: Callable[[], SplitCosts]) -> list[int]:
    """Unit indices where modules end, from the config's split (METHODS.md 2.2).

    Computed splits ("auto", or "balanced" without a published table) minimise the largest module's cost
    as ``costs()`` models it (``split_cost.split_costs``; called only for a computed split)."""
    K = config.num_modules
    splits.check_num_modules(K, backbone.num_units)
    keys = backbone.unit_keys
    if isinstance(config.split, list):
        ends = splits.ends_from_cuts(config.split, keys)
        if len(ends) != K - 1:
            raise ValueError(
                f"split: {len(ends)} cuts make {len(ends) + 1} modules but num_modules={K}; give {K - 1} cuts."
            )
        return ends
    if K == 1:
        return []
    image_size = config.image_size or backbone.image_size
    if config.split in ("paper", "balanced", "stages"):
        own = backbone.named_splits(config.split)  # a backbone's own table (Swin's stages) comes first
        cuts = own.get(K) if own else splits.table_cuts(config.split, config.model, K, image_size)
        if cuts is not None:
            return splits.ends_from_cuts(cuts, keys)
        if config.split in ("paper", "stages"):
            known = sorted(own) if own else (splits.paper_ks(config.model) if config.split == "paper" else [])
            if not known:
                raise ValueError(
                    f"split: {config.model} defines no {config.split} split; its splits are "
                    f"{', '.join(_split_names(config.model, backbone))} or explicit cuts."
                )
            raise ValueError(
                f"split: the {config.split} split of {config.model} is defined for num_modules in "
                f"{known}, not {K}; use split='balanced', 'auto', 'uniform' or explicit cuts."
            )
    if config.split == "uniform":
        return splits.uniform_ends(backbone.num_units, K)
    return costs().ends(K)  # "auto", or "balanced" without a table


def _split_names(model: str, backbone: Backbone) -> list[str]:
    """The named splits that exist for a backbone: ``paper`` and ``stages`` only where tables define them."""
    defined = {"paper": bool(splits.paper_ks(model) or backbone.named_splits("paper")),
               "stages": bool(backbone.named_splits("stages"))}
    return [name for name in splits.SPLIT_NAMES if defined.get(name, True)]


def build_net(config: NetConfig) -> LocalNet:
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("num_classes", config.num_classes)
    if config.image_size is not None:
        kwargs.setdefault("image_size", config.image_size)
    backbone = create_model(config.model, **kwargs)

    def costs() -> SplitCosts:  # the cost model of a computed split, measured only when one is asked for
        from locallearn.split_cost import split_costs

        return split_costs(config, backbone)

    ends = resolve_ends(config, backbone, costs)
    return LocalNet(config, backbone, ends)
