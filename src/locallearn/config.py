"""What a local network is: one frozen, validated config (``NetConfig``), resolved in one function.

``resolve_net(model, method, dataset=..., **options)`` lays, in this order,

    NetConfig's defaults ← the method's preset (``Method.defaults``) ← its per-family overrides
    (``Method.family_defaults``, e.g. InfoPro on a transformer) ← the dataset's classes, channels, image
    size and normalisation ← the options given

and then derives what follows from them: the auxiliary head ``auto`` becomes the model family's head, and
with image reconstruction the λ schedule's end points come from the tables of docs/methods.md §4 (or the
documented default), with where they came from (``lambda_source``). The result holds every value the
network is built from — a run's ``config.yaml`` records exactly this — and ``NetConfig(**cfg.to_dict())``
is ``cfg`` again. A method is only a set of defaults over orthogonal options, so ``resolve_net("resnet32",
"infopro", local_loss="ce")`` is InfoPro with a softmax head. ``dataclasses.replace`` changes one field of
a resolved config and nothing else: to change the method with its defaults, resolve again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from locallearn.context import ContextMode
from locallearn.data import DatasetSpec, describe_dataset
from locallearn.decoders import FEATURE_DECODERS
from locallearn.heads import HEADS
from locallearn.losses import LOCAL_LOSSES, lambda_schedule, lookup_lambdas
from locallearn.methods import METHODS, Method
from locallearn.methods.base import DEFAULT_NUM_MODULES
from locallearn.models import MODELS, OBJECT, Backbone, check_model, check_model_options, create_model, model_family
from locallearn.models.registry import FAMILY_HEADS
from locallearn.split import SPLITS, paper_ks, table_cuts
from locallearn.validate import Bool, Float, Int, Mapping, Numbers, Optional, check, check_fields, count_word, is_number

# Option names of earlier releases → today's (config.yaml files written before keep loading).
RENAMED = {"checkpoint": "activation_checkpointing", "checkpoint_segments": "activation_segments"}


@dataclass(frozen=True)
class NetConfig:
    """Everything that defines a local network (module docstring). Build it with ``resolve_net``."""

    model: str = "resnet32"
    method: str = "contsup"
    num_modules: int = field(default=DEFAULT_NUM_MODULES, metadata=check(Int(1)))  # K
    split: str | tuple = "paper"  # a name of ``split.SPLITS`` or cuts ((stage, block), ...)
    aux_head: str | None = "1c2f"  # "auto": the model family's head (1c2f for CNNs, token for transformers)
    local_loss: str = "ce"  # "ce" or "contrast"
    reconstruct: bool = field(default=False, metadata=check(Bool()))  # InfoPro's image reconstruction
    context: str = "R0"  # ContSup's context mode
    num_classes: int = field(default=10, metadata=check(Int(2, 1_000_000)))  # bounded: a typo is not a 40 GB head
    image_size: int | None = field(default=None, metadata=check(Optional(Int(1, 8192))))  # None: the backbone's own
    in_channels: int = field(default=3, metadata=check(Int(1)))  # of the input image
    image_mean: tuple[float, ...] | None = None  # of the [0, 1] image, per channel; inputs are (x − mean) / std
    image_std: tuple[float, ...] | None = None
    lambdas: tuple[float, ...] | None = field(  # (λxx_first, λxy_first, λxx_last, λxy_last), with reconstruction
        default=None, metadata=check(Optional(Numbers(length=4, minimum=0.0)))
    )
    lambda_source: str | None = None  # where the λ came from: a table, the documented default, or "config"
    temperature: float = field(default=0.07, metadata=check(Float(above=0.0)))  # of the contrastive loss
    activation_checkpointing: bool = field(default=False, metadata=check(Bool()))  # inside each module
    activation_segments: int | None = field(default=None, metadata=check(Optional(Int(1))))  # default ≈ √units
    feature_decoder: str | None = None  # FeatRecon: "linear", "conv" or "transformer"
    feature_weight: float = field(default=1.0, metadata=check(Float(minimum=0.0)))  # FeatRecon's λ
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata=check(Mapping("a mapping of backbone arguments")))

    def __post_init__(self) -> None:
        check_model(self.model)
        method = METHODS.get(self.method)
        check_fields(self)
        # one value, which config.yaml records and build_net passes to the factory (the same value given again
        # there is accepted: runs of earlier releases, which allowed it, are read back)
        own = next((name for name in ("in_channels", "num_classes", "image_size")
                    if name in self.model_kwargs and self.model_kwargs[name] != getattr(self, name)), None)
        if own is not None:
            raise ValueError(
                f"model_kwargs: {own} is an option of its own ({own}=..., or the dataset's), not a backbone "
                f"argument; pass it as {own}."
            )
        check_model_options(self.model, self.model_kwargs)
        if method.single_module and self.num_modules != 1:
            raise ValueError(
                f"num_modules: method {self.method!r} trains the network as one module (num_modules=1), got "
                f"{self.num_modules}; use a local method ({', '.join(local_methods())}) for K > 1."
            )
        object.__setattr__(self, "split", _split(self.split))
        if self.num_modules > 1:
            if self.aux_head is None:
                raise ValueError(f"aux_head: K={self.num_modules} needs an auxiliary head; valid: {', '.join(HEADS.names())}.")
            HEADS.get(self.aux_head)
        LOCAL_LOSSES.get(self.local_loss)
        mode = ContextMode.parse(self.context)
        if method.single_module and mode.uses_context:
            raise ValueError(f"context: method {self.method!r} trains the network as one module, with no boundary to "
                             f"supply context {self.context} to; drop --context, or use a local method "
                             f"({', '.join(local_methods())}) with --num-modules K > 1.")
        mode.check_modules(self.num_modules)
        if self.feature_decoder is not None:
            FEATURE_DECODERS.get(self.feature_decoder)
        for name in ("image_mean", "image_std"):
            object.__setattr__(self, name, _per_channel(name, getattr(self, name), self.in_channels))
        if self.image_std is not None and min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive in every channel, got {list(self.image_std)}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for YAML and JSON."""
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


NET_FIELDS = tuple(f.name for f in dataclasses.fields(NetConfig))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NetConfig) if f.default is not dataclasses.MISSING}


def local_methods() -> list[str]:
    return [name for name in METHODS.names() if not METHODS.get(name).single_module]


def resolve_net(
    model: str | nn.Module, method: str = "contsup", *, dataset: str | DatasetSpec | None = None, **options: Any
) -> NetConfig:
    """The network's config: defaults ← method preset ← model family ← dataset ← ``options`` (module
    docstring). ``model``: a registered name, a factory's import path (``package.module:factory``), or a model
    object (a ``Backbone`` or an ``nn.Sequential``: ``models.custom``). ``dataset``: a registered name, or the
    spec of a dataset described from its files (a user's image folder: ``data.describe_dataset``). Unknown
    option names are refused by name.

    K, when not given, is the number of explicit cuts plus one, else the method's. The split, when not given,
    is the published one (``paper``) where the model has cuts for this K, else the computed memory-balanced
    one (``auto``): ``default_split``. ``pretrained`` (a checkpoint: hub name or ``save_pretrained``
    directory) is the backbone argument of that name, put into ``model_kwargs``."""
    options = {RENAMED.get(k, k): v for k, v in options.items()}
    unknown = sorted(set(options) - set(NET_FIELDS) - {"model", "method", "pretrained"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; valid options are "
                         f"{', '.join((*NET_FIELDS, 'dataset', 'pretrained'))}.")
    pretrained = options.pop("pretrained", None)
    if pretrained is not None:
        kwargs = options.get("model_kwargs")
        if kwargs is None or isinstance(kwargs, dict):  # anything else is refused as model_kwargs below
            options["model_kwargs"] = {**(kwargs or {}), "pretrained": str(pretrained)}
    if isinstance(model, nn.Module):
        family, name = getattr(model, "family", "cnn"), OBJECT + type(model).__name__
    else:
        check_model(model)
        family, name = model_family(model), model
    if family not in FAMILY_HEADS:
        raise ValueError(f"family: {name} says family {family!r}; valid families are {', '.join(FAMILY_HEADS)}.")
    values: dict[str, Any] = {**_DEFAULTS, "model_kwargs": {}}
    values.update(method_preset(METHODS.get(method), family))
    spec = dataset if isinstance(dataset, DatasetSpec) or dataset is None else describe_dataset(
        dataset, None, image_size=options.get("image_size"))
    values.update(dataset_defaults(spec, options))
    values.update(options)
    values.update(model=name, method=method)
    cuts = values.get("split")
    if ("num_modules" not in options and isinstance(cuts, (list, tuple)) and cuts
            and not METHODS.get(method).single_module):
        values["num_modules"] = len(cuts) + 1  # explicit cuts say K: the method's default would contradict them
    if "split" not in options:
        values["split"] = default_split(model, values["num_modules"], values["model_kwargs"])
    if values["aux_head"] == "auto":  # resolved here, so the run's config names the head
        values["aux_head"] = FAMILY_HEADS[family]
    values["lambdas"], values["lambda_source"] = _lambdas(values, spec.name if spec is not None else None)
    return NetConfig(**values)


def method_preset(method: Method, family: str) -> dict[str, Any]:
    """``method.preset(family)``, its keys checked: a method's defaults name options of the network (the
    fields of ``NetConfig``) and its family defaults the model families, so a misspelt key of a method of
    one's own is refused in one line (it was a TypeError from ``NetConfig``, or a family silently ignored)."""
    where = f"method {method.name}"
    for family_name, values in [(None, method.defaults), *method.family_defaults.items()]:
        if family_name is not None and family_name not in FAMILY_HEADS:
            raise ValueError(f"{where}: family_defaults names family {family_name!r}; the model families are "
                             f"{', '.join(FAMILY_HEADS)}.")
        unknown = sorted(set(values) - set(NET_FIELDS))
        if unknown:
            what = "defaults" if family_name is None else f"family_defaults[{family_name!r}]"
            raise ValueError(f"{where}: its {what} set {unknown[0]!r}, which is not an option of the network; "
                             f"the options are NetConfig's fields: {', '.join(NET_FIELDS)}.")
    return method.preset(family)


def default_split(model: str | nn.Module, num_modules: Any = None, model_kwargs: Any = None) -> str:
    """The split a model gets when none is given: ``paper`` where it has published cuts for ``num_modules``
    (for some K, where that is not given or is 1), else the computed ``auto``. The cuts are the published
    tables' (``split.tables``) or the backbone's own ``paper`` split, its ``named_splits("paper")`` (Swin's
    stages: a registered backbone is built on the meta device to read them, with ``model_kwargs``, since its
    depths decide them; a user's factory is not run for it)."""
    one = not isinstance(num_modules, int) or isinstance(num_modules, bool) or num_modules <= 1
    if isinstance(model, Backbone):
        ks = list(model.named_splits("paper"))
    elif isinstance(model, nn.Module):
        ks = []
    elif paper_ks(model):
        ks = paper_ks(model)
    elif model in MODELS:
        ks = _own_paper_ks(model, model_kwargs if isinstance(model_kwargs, dict) else {})  # another type: refused
    else:  # by its check
        ks = []
    return "paper" if ks and (one or num_modules in ks) else "auto"  # a wrong K is refused by NetConfig, naming it


_OWN_PAPER_KS: dict[tuple[str, str], list[int]] = {}  # (model, its kwargs' repr) → K: a grid resolves it often


def _own_paper_ks(model: str, model_kwargs: dict[str, Any]) -> list[int]:
    """The K of a registered backbone's own ``paper`` split, read from the backbone built on the meta device (no
    memory, no initialisation; without ``pretrained``, which only sets the weights), once per model and
    kwargs; none where it cannot be built (the network's build then names why)."""
    kwargs = {k: v for k, v in model_kwargs.items() if k != "pretrained"}
    key = (model, repr(sorted(kwargs.items())))
    if key not in _OWN_PAPER_KS:
        try:
            with torch.device("meta"):
                _OWN_PAPER_KS[key] = list(create_model(model, **kwargs).named_splits("paper"))
        except Exception:  # a bad model_kwargs: refused with its reason when the network is built
            _OWN_PAPER_KS[key] = []
    return _OWN_PAPER_KS[key]


def dataset_defaults(spec: DatasetSpec | None, options: dict[str, Any]) -> dict[str, Any]:
    """What a dataset implies for the network (classes, channels, image size, normalisation), checked against
    the options that set the same things (the image size: ``data.describe_dataset``)."""
    if spec is None:
        return {}
    classes = options.get("num_classes", spec.num_classes)
    if is_number(classes) and classes < spec.num_classes:
        raise ValueError(
            f"num_classes: dataset {spec.name} has {spec.num_classes} classes, got num_classes={classes}."
        )
    channels = options.get("in_channels", spec.channels)
    if channels != spec.channels:
        raise ValueError(
            f"in_channels: dataset {spec.name} has {spec.channels}-channel images, got in_channels={channels}."
        )
    return dict(num_classes=spec.num_classes, image_size=spec.image_size, in_channels=spec.channels,
                image_mean=tuple(spec.mean), image_std=tuple(spec.std))


def _lambdas(values: dict[str, Any], dataset: str | None) -> tuple[Any, str | None]:
    """λ end points and their source: given (by the options or the method's preset: "config", unless a
    stored config says where they came from), else a table or the documented default — only with image
    reconstruction in a local network; otherwise none are needed (the reference scripts looked a table up
    anyway and crashed on unknown datasets, docs/methods.md §9)."""
    K = values["num_modules"]
    if values.get("lambdas") is not None:
        if values.get("lambda_source") is None and values["reconstruct"] and isinstance(K, int) and K >= 2:
            _check_every_module_learns(values["lambdas"], K)
        return values["lambdas"], values.get("lambda_source") or "config"
    if not values["reconstruct"] or not isinstance(K, int) or K < 2:
        return None, None
    # the memory-balanced λ belong to the papers' memory-balanced cuts, not to a computed split
    balanced = values["split"] == "balanced" and table_cuts("balanced", values["model"], K, values["image_size"]) is not None
    return lookup_lambdas(values["model"], dataset, K, balanced=balanced)


def _check_every_module_learns(lambdas: Any, num_modules: int) -> None:
    """Given λ must leave no local module with both weights 0: such a module would never learn (a stored
    config is not checked again, so an old run still loads)."""
    try:
        weights = lambda_schedule(tuple(lambdas), num_modules)
    except (TypeError, ValueError):
        return  # not four numbers: NetConfig's own check names the problem
    dead = [m for m, (xx, xy) in enumerate(weights) if xx == 0 and xy == 0]
    if dead:
        raise ValueError(
            f"lambdas: {list(lambdas)} give local module {dead[0]} of {num_modules} the weights (0, 0), so it "
            "would never learn; give every local module a non-zero reconstruction or task weight "
            "(λ move linearly from the first to the last local module, docs/methods.md §4)."
        )


def _split(split: Any) -> str | tuple:
    if isinstance(split, str):
        if split not in SPLITS:
            raise ValueError(
                f"split: unknown split {split!r}; valid splits are {', '.join(SPLITS.names())} "
                f"or a YAML list of cuts: {_CUTS}."
            )
        return split
    if isinstance(split, (list, tuple)):
        return tuple(tuple(c) if isinstance(c, (list, tuple)) else c for c in split)
    raise ValueError(f"split: expected a name or a YAML list of cuts ({_CUTS}), got {split!r}.")


# how cuts are written: the units the modules end with, by the backbone's unit keys
_CUTS = "[[stage, block], ...] for the built-in backbones, [0, 2] (unit indices or names) for a model of your own"


def _per_channel(name: str, value: Any, channels: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != channels or not all(is_number(v) for v in value):
        raise ValueError(
            f"{name}: expected {count_word(channels)} finite number{'s' if channels > 1 else ''} (one per channel), "
            f"got {value!r}."
        )
    return tuple(float(v) for v in value)


def plain(value: Any) -> Any:
    """A config value for YAML and JSON: tuples as lists, at any depth."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
