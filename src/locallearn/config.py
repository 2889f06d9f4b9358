"""What a local network is: one typed config, validated at construction, and the method presets.

A *method* is only a named set of defaults over orthogonal options (head, loss, context mode,
reconstruction, K), so every preset field can be overridden: ``build("resnet32", method="infopro",
local_loss="ce")`` is InfoPro with a softmax head. Where a method's defaults differ by model family
(``cnn``, ``transformer``: ``models.model_family``), ``FAMILY_PRESETS`` says so, in this one place.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from locallearn.context import ContextMode
from locallearn.data.specs import DATASETS
from locallearn.decoders import FEATURE_DECODERS
from locallearn.heads import HEADS
from locallearn.losses import LOCAL_LOSSES
from locallearn.models import MODELS, check_model_options, default_aux_head, model_family
from locallearn.registry import Registry
from locallearn.split import SPLIT_NAMES

METHODS: Registry[dict[str, Any]] = Registry("method")
METHODS.register("e2e", dict(num_modules=1, aux_head=None, context="R0", reconstruct=False))
METHODS.register(
    "checkpoint", dict(num_modules=1, aux_head=None, context="R0", reconstruct=False, checkpoint=True)
)
METHODS.register("greedy", dict(aux_head="linear", local_loss="ce", context="R0", reconstruct=False))
METHODS.register("dgl", dict(aux_head="dgl", local_loss="ce", context="R0", reconstruct=False))
# aux_head "auto": the backbone family's head (models.default_aux_head): 1c2f on CNNs, the token head on Swin.
METHODS.register("infopro", dict(aux_head="auto", local_loss="contrast", context="R0", reconstruct=True))
METHODS.register("contsup", dict(aux_head="auto", local_loss="ce", context="R1E", reconstruct=False))

# (method, model family) → what the method's preset becomes on that family (``method_defaults``).
# InfoPro on a transformer is InfoPro-Transformer, FeatRecon's baseline (METHODS.md 6): FeatRecon's modules
# and token head with InfoPro's image decoder, trained with cross-entropy and λ = (1, 1, 1, 1), i.e.
# BCE + cross-entropy in every local module (our choice: the λ tables of METHODS.md 4 are for ResNets).
FAMILY_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("infopro", "transformer"): dict(local_loss="ce", lambdas=(1.0, 1.0, 1.0, 1.0)),
}


def method_defaults(method: str, model: str) -> dict[str, Any]:
    """A method's preset on a model: ``METHODS[method]`` ← ``FAMILY_PRESETS`` for the model's family."""
    return {**METHODS.get(method), **FAMILY_PRESETS.get((method, model_family(model)), {})}


@dataclass
class NetConfig:
    """Everything that defines a local network. Built through ``make_config`` / ``ll.build``."""

    model: str = "resnet32"
    method: str = "contsup"
    num_modules: int = 4  # K
    split: str | list = "paper"  # "paper", "balanced", "auto", "uniform", "stages" or [[stage, block], ...]
    aux_head: str | None = "1c2f"  # or "auto": the backbone family's head (1c2f for CNNs, token for Swin)
    local_loss: str = "ce"  # "ce" or "contrast"
    reconstruct: bool = False  # InfoPro's image reconstruction in every local module
    context: str = "R0"  # ContSup context mode
    dataset: str | None = None  # picks classes, image size, normalisation and the λ table
    num_classes: int | None = None
    image_size: int | None = None
    image_mean: tuple[float, ...] | None = None  # of the [0, 1] image; inputs are (x − mean) / std
    image_std: tuple[float, ...] | None = None
    lambdas: tuple[float, float, float, float] | None = None  # (λxx_first, λxy_first, λxx_last, λxy_last)
    temperature: float = 0.07  # of the contrastive loss
    checkpoint: bool = False  # activation checkpointing inside each module
    checkpoint_segments: int | None = None  # default: about √units
    feature_decoder: str | None = None  # FeatRecon: "linear", "conv" or "transformer"
    feature_weight: float = 1.0  # FeatRecon's λ on the feature-reconstruction MSE
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the backbone factory

    def __post_init__(self) -> None:
        MODELS.get(self.model)
        METHODS.get(self.method)
        if self.aux_head == "auto":  # resolved here, so the run's config names the head
            self.aux_head = default_aux_head(self.model)
        spec = DATASETS.get(self.dataset) if self.dataset is not None else None
        if self.num_classes is None:
            self.num_classes = spec.num_classes if spec else 10
        if self.image_size is None and spec is not None:
            self.image_size = spec.image_size
        if spec is not None:
            self.image_mean = tuple(self.image_mean or spec.mean)
            self.image_std = tuple(self.image_std or spec.std)
        for name in ("reconstruct", "checkpoint"):  # a string "False" must not switch an option on
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        _check_int("num_classes", self.num_classes, 2)
        if spec is not None and self.num_classes < spec.num_classes:
            raise ValueError(
                f"num_classes: dataset {spec.name} has {spec.num_classes} classes, got num_classes={self.num_classes}."
            )
        if self.image_size is not None:
            _check_int("image_size", self.image_size, 1)
            if spec is not None and self.image_size != spec.image_size:
                raise ValueError(
                    f"image_size: dataset {spec.name} delivers {spec.image_size}×{spec.image_size} images, got "
                    f"image_size={self.image_size}; a backbone that runs at another resolution says so in "
                    f"model_kwargs (Swin: resolution)."
                )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_finite(v) for v in value):
                raise ValueError(f"{name}: expected three finite numbers (one per channel), got {value!r}.")
            setattr(self, name, tuple(float(v) for v in value))
        if self.image_std is not None and min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive in every channel, got {list(self.image_std)}.")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs: expected a mapping of backbone arguments, got {self.model_kwargs!r}.")
        check_model_options(self.model, self.model_kwargs)
        _check_int("num_modules", self.num_modules, 1)
        if self.method in ("e2e", "checkpoint") and self.num_modules != 1:
            raise ValueError(
                f"num_modules: method {self.method!r} trains the network as one module (num_modules=1), got "
                f"{self.num_modules}; use a local method (greedy, dgl, infopro, contsup, featrecon) for K > 1."
            )
        if isinstance(self.split, str):
            if self.split not in SPLIT_NAMES:
                raise ValueError(
                    f"split: unknown split {self.split!r}; valid splits are {', '.join(SPLIT_NAMES)} "
                    f"or a list of [stage, block] cuts."
                )
        elif isinstance(self.split, (list, tuple)):
            self.split = [list(c) if isinstance(c, (list, tuple)) else c for c in self.split]
        else:
            raise ValueError(f"split: expected a name or a list of [stage, block] cuts, got {self.split!r}.")
        if self.num_modules > 1:
            if self.aux_head is None:
                raise ValueError(f"aux_head: K={self.num_modules} needs an auxiliary head; valid: {', '.join(HEADS.names())}.")
            HEADS.get(self.aux_head)
        LOCAL_LOSSES.get(self.local_loss)
        ContextMode.parse(self.context).check_modules(self.num_modules)
        if self.feature_decoder is not None:
            FEATURE_DECODERS.get(self.feature_decoder)
        if self.reconstruct and self.image_size is None:
            raise ValueError(
                "reconstruct: image reconstruction needs a known image size; pass dataset=... or image_size=..."
            )
        if self.lambdas is not None:
            if len(self.lambdas) != 4:
                raise ValueError(f"lambdas: expected (λxx_first, λxy_first, λxx_last, λxy_last), got {self.lambdas!r}.")
            if not all(_finite(v) and v >= 0 for v in self.lambdas):
                raise ValueError(f"lambdas must be four numbers >= 0, got {list(self.lambdas)!r}.")
            self.lambdas = tuple(float(v) for v in self.lambdas)
        if not _finite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}.")
        if not _finite(self.feature_weight) or self.feature_weight < 0:
            raise ValueError(f"feature_weight must be a number >= 0, got {self.feature_weight!r}.")
        if self.checkpoint_segments is not None:
            _check_int("checkpoint_segments", self.checkpoint_segments, 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(NetConfig))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def make_config(model: str, method: str = "contsup", **overrides: Any) -> NetConfig:
    """Defaults ← the method's preset on this model (``method_defaults``) ← ``overrides``. Unknown keys are
    refused by name."""
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; valid options are {', '.join(CONFIG_FIELDS)}.")
    values: dict[str, Any] = method_defaults(method, model)
    values.update(overrides)
    return NetConfig(model=model, method=method, **values)
