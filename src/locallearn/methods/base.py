"""What a local-learning method is: a name, its defaults, and the local objective of each boundary.

A method is an object (``Method``) with

- ``defaults``: the options it sets (auxiliary head, local loss, context mode, reconstruction, K, ...), every
  one of which a user may override (``build("resnet32", method="infopro", local_loss="ce")`` is InfoPro with
  a softmax head), and ``family_defaults``: what changes on a model family (``cnn``, ``transformer``);
- ``build_objectives(config, boundaries)``: one ``LocalObjective`` per local module k < K−1 — an
  ``nn.Module`` holding that module's auxiliary head, task loss and decoders, whose
  ``forward(h, inputs, state)`` returns ``(loss, metrics)``.

``LocalNet`` holds the objectives and calls them (``LocalNet.local_loss``); the split cost model prices them
by running them (``split.auto``). A new method is therefore one file that registers a ``Method`` (with its
own objective class if it needs one), and no edit to ``LocalNet``, the config, the cost model or the
benchmark grid.

The supervised objective every published method here shares (docs/methods.md §3, §4, §6):

    L_k = L_task(head_k(h_k), y)                                     no reconstruction
    L_k = λ_xx(k)·BCE(dec_k(h_k), x01) + λ_xy(k)·L_task(...)          InfoPro's image reconstruction
    L_k = (...) + feature_weight · MSE(fdec_k(h_k), sg(input_k))      FeatRecon's feature reconstruction
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.decoders import FEATURE_DECODERS, ImageDecoder, feature_mse
from locallearn.heads import create_head
from locallearn.losses import LOCAL_LOSSES, reconstruction_bce
from locallearn.registry import Registry

if TYPE_CHECKING:
    from locallearn.config import NetConfig


@dataclass
class ForwardState:
    """What the modules of one forward pass share: the input image (normalised), the labels, the context
    history ĥ_j (ContSup), and ``taps``: outputs of units that an objective asked to read (detached)."""

    image: torch.Tensor
    labels: torch.Tensor | None = None
    history: dict[int, torch.Tensor] = field(default_factory=dict)
    taps: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Boundary:
    """What the objective of local module k is built for (shapes without the batch dimension)."""

    index: int  # k, 0..K−2
    units: tuple[int, int]  # the first and the last unit of module k
    out_shape: tuple[int, ...]  # h_k, the module's output
    in_shape: tuple[int, ...]  # the module's input: the image for k = 0, else h_{k−1}
    image_shape: tuple[int, int, int]  # (C, S, S) of the network's input
    unit_shapes: tuple[tuple[int, ...], ...]  # every unit's output shape (a tap's shape)
    lambdas: tuple[float, float] = (1.0, 1.0)  # (λ_xx, λ_xy) of reconstruction for module k


class LocalObjective(nn.Module):
    """Module k's local objective. ``taps``: the units whose (detached) outputs the objective reads from
    ``state.taps``; ``LocalNet.module_forward`` records them while it runs the module."""

    taps: tuple[int, ...] = ()

    def forward(self, h: torch.Tensor, inputs: torch.Tensor, state: ForwardState):  # pragma: no cover - abstract
        raise NotImplementedError


class NetworkLoss(LocalObjective):
    """The last module's objective: the network's own classifier output, cross-entropy."""

    def forward(self, h: torch.Tensor, inputs: torch.Tensor, state: ForwardState):
        loss = F.cross_entropy(h, state.labels)
        return loss, {"loss": loss.detach(), "acc": accuracy(h, state.labels)}


class SupervisedObjective(LocalObjective):
    """Auxiliary head + task loss, optionally InfoPro's image reconstruction and FeatRecon's feature
    reconstruction (module docstring). ``feature_tap``: the unit whose output is the feature target instead
    of the module's input (FeatRecon's module 0 reconstructs the patch embedding, the first unit's output)."""

    def __init__(
        self,
        head: nn.Module,
        *,
        local_loss: str,
        temperature: float,
        image_decoder: nn.Module | None = None,
        lambdas: tuple[float, float] = (1.0, 1.0),
        image_mean: Sequence[float] = (),
        image_std: Sequence[float] = (),
        feature_decoder: nn.Module | None = None,
        feature_weight: float = 1.0,
        feature_tap: int | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        self.task = LOCAL_LOSSES.get(local_loss)
        self.temperature = temperature
        self.image_decoder = image_decoder
        self.lambdas = lambdas
        if image_decoder is not None:  # the [0, 1] image is the target: un-normalise with the run's constants
            channels = len(image_mean)
            self.register_buffer("image_mean", torch.tensor(image_mean).view(1, channels, 1, 1), persistent=False)
            self.register_buffer("image_std", torch.tensor(image_std).view(1, channels, 1, 1), persistent=False)
        self.feature_decoder = feature_decoder
        self.feature_weight = feature_weight
        self.feature_tap = feature_tap
        self.taps = (feature_tap,) if feature_tap is not None else ()

    def forward(self, h: torch.Tensor, inputs: torch.Tensor, state: ForwardState):
        labels = state.labels
        z = self.head(h)
        task = self.task.score(z, labels, temperature=self.temperature)
        metrics = {"task": task.detach()}
        if self.task.gives_logits:
            metrics["acc"] = accuracy(z, labels)
        loss = task
        if self.image_decoder is not None:
            rec = reconstruction_bce(self.image_decoder(h), self.denormalize(state.image))
            lam_xx, lam_xy = self.lambdas
            loss = lam_xx * rec + lam_xy * task
            metrics["rec"] = rec.detach()
        if self.feature_decoder is not None:
            # the module's own input, or a tapped unit output (consumed: not kept alive past this module)
            target = state.taps.pop(self.feature_tap) if self.feature_tap is not None else inputs.detach()
            feat = feature_mse(self.feature_decoder, h, target)
            loss = loss + self.feature_weight * feat
            metrics["feat"] = feat.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """The un-normalised [0, 1] image, the target of image reconstruction (computed anew per module)."""
        return (images * self.image_std + self.image_mean).clamp(0.0, 1.0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).float().mean()


DEFAULT_NUM_MODULES = 4  # K of a run that gives none, of a method that sets none (NetConfig.num_modules)


class Method:
    """A named local-learning method (module docstring). Subclass it, or use it as it is, to add one."""

    def __init__(
        self,
        name: str,
        *,
        defaults: dict[str, Any],
        family_defaults: dict[str, dict[str, Any]] | None = None,
        single_module: bool = False,
        description: str = "",
    ) -> None:
        self.name = name
        self.defaults = dict(defaults)
        self.family_defaults = dict(family_defaults or {})
        self.single_module = single_module  # trains the whole network as one module (K = 1 only)
        self.description = description

    def preset(self, family: str) -> dict[str, Any]:
        """The method's defaults on a model family: ``defaults`` ← ``family_defaults[family]``."""
        return {**self.defaults, **self.family_defaults.get(family, {})}

    @property
    def num_modules(self) -> int:
        """K when a run does not give it: the method's own, else ``DEFAULT_NUM_MODULES``."""
        return self.defaults.get("num_modules", DEFAULT_NUM_MODULES)

    @property
    def varies_context(self) -> bool:
        """Whether the method supplies context (its context mode is a meaningful axis of a comparison)."""
        return self.defaults.get("context", "R0") != "R0"

    @property
    def varies_feature_decoder(self) -> bool:
        """Whether the method reconstructs features (its decoder is a meaningful axis of a comparison)."""
        return self.defaults.get("feature_decoder") is not None

    def objectives(self, config: NetConfig, boundaries: Sequence[Boundary], num_units: int) -> list[LocalObjective]:
        """``build_objectives``, checked against its contract (docs/architecture.md, adding a method): one
        ``LocalObjective`` per boundary, its taps naming units of the backbone (``num_units``); a method of
        one's own that breaks it is refused in one line, before anything trains. What LocalNet and the split
        cost model call."""
        built = self.build_objectives(config, boundaries)
        fix = "see docs/architecture.md, adding a method"
        if not isinstance(built, (list, tuple)) or len(built) != len(boundaries):
            got = f"{len(built)}" if isinstance(built, (list, tuple)) else f"a {type(built).__name__}"
            raise ValueError(f"method {self.name}: build_objectives must return one local objective per boundary "
                             f"({len(boundaries)}), got {got}; {fix}.")
        for i, objective in enumerate(built):
            if not isinstance(objective, LocalObjective):
                raise ValueError(f"method {self.name}: objective {i} is a {type(objective).__name__}, not a "
                                 f"LocalObjective (an nn.Module with forward(h, inputs, state) -> (loss, metrics) "
                                 f"and taps); {fix}.")
            bad = [u for u in objective.taps if not (isinstance(u, int) and 0 <= u < num_units)]
            if bad:
                raise ValueError(f"method {self.name}: objective {i} taps unit {bad[0]!r}, but the backbone's units "
                                 f"are 0..{num_units - 1}; {fix}.")
        return list(built)

    def build_objectives(self, config: NetConfig, boundaries: Sequence[Boundary]) -> list[LocalObjective]:
        """The supervised objective of each boundary, from the config's head, loss and reconstruction options.

        Parts are created kind by kind — every head, then every image decoder, then every feature decoder —
        so that the random initialisation of a network does not depend on how objectives are grouped."""
        head_dim = LOCAL_LOSSES.get(config.local_loss).head_dim(config.num_classes)
        heads = [create_head(config.aux_head, b.out_shape, head_dim) for b in boundaries]
        image_decoders = [None] * len(boundaries)
        if config.reconstruct:
            tokens = next((b.out_shape for b in boundaries if len(b.out_shape) != 3), None)
            if tokens is not None:
                raise ValueError(f"reconstruct: InfoPro's image decoder upsamples a feature map (C, H, W) to the image, "
                                 f"but a cut gives {tuple(tokens)}; on tokens use a method without it (greedy, or "
                                 f"contsup with context R0) and aux_head token, or cut where the model has maps.")
            image_decoders = [ImageDecoder(b.out_shape[0], b.image_shape[-1], image_channels=b.image_shape[0]) for b in boundaries]
        feature_decoders: list[nn.Module | None] = [None] * len(boundaries)
        taps: list[int | None] = [None] * len(boundaries)
        if config.feature_decoder is not None:
            factory = FEATURE_DECODERS.get(config.feature_decoder)
            for i, b in enumerate(boundaries):
                taps[i] = feature_tap(b)
                target = b.unit_shapes[taps[i]] if taps[i] is not None else b.in_shape
                feature_decoders[i] = factory(b.out_shape, target)
        channels = boundaries[0].image_shape[0] if boundaries else 0
        mean = config.image_mean or (0.0,) * channels  # no normalisation known: the input is the [0, 1] image
        std = config.image_std or (1.0,) * channels
        return [
            SupervisedObjective(
                head, local_loss=config.local_loss, temperature=config.temperature,
                image_decoder=image_decoder, lambdas=b.lambdas, image_mean=mean, image_std=std,
                feature_decoder=feature_decoder, feature_weight=config.feature_weight, feature_tap=tap,
            )
            for b, head, image_decoder, feature_decoder, tap in zip(
                boundaries, heads, image_decoders, feature_decoders, taps
            )
        ]


def feature_tap(boundary: Boundary) -> int | None:
    """The unit whose output FeatRecon's module reconstructs, where it is not the module's input.

    Module k reconstructs its own input features (docs/methods.md §6): h_{k−1}, and for k = 0 the patch
    embedding — the output of unit 0, since the image itself is not a feature map of the network. Module 0
    then starts after that unit; a module 0 made of unit 0 alone reconstructs the image."""
    first, last = boundary.units
    return first if first == 0 and last > 0 else None


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method (locallearn.methods.base.Method or a subclass), got "
                        f"{type(method).__name__}; see docs/architecture.md, adding a method.")
    METHODS.register(method.name, method)
    return method
