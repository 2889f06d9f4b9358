"""Benchmark grids: models × methods × K × split × context mode × feature decoder × auxiliary head × batch
size, validated up front.

A ``GridSpec`` names the values of each axis; ``expand()`` turns it into the configurations worth
running (``BenchConfig``), by these rules:

- ``e2e`` is always included, once per model and batch size: it is the reference of every ratio.
- ``e2e`` and ``checkpoint`` train the network as one module: they run at K = 1 only, without split or
  context. Local methods run at every K ≥ 2 of the grid (at K = 1 they would be ``e2e``).
- Context modes multiply only the methods that supply context (``contsup``); every other method runs
  with its preset's mode. Feature decoders multiply only the methods that reconstruct features
  (``featrecon``); every other method has none. Auxiliary heads, when given, multiply every local method;
  by default each method runs with its own head.
- Every method runs with its preset on the model (``Method.preset``): on a transformer backbone (Swin)
  ``infopro`` is InfoPro-Transformer, as in ``configs/swin/``.
- Which rule applies to a method comes from the method object (``single_module``, ``varies_context``,
  ``varies_feature_decoder``), so a new method needs no edit here.
- The split ``default`` is, per model and K, the one ``locallearn train`` uses when none is given: ``paper``
  where the model has published cuts for that K, else ``auto`` (``config.default_split``); the table names the
  split it ran.
- A combination that cannot be built (a ``paper`` split at a K its table lacks, R8 at K = 4) is still
  listed: the runner reports it as skipped, with the builder's reason.

Every name is checked before anything runs; an unknown one raises ``ValueError`` naming the option and
the valid values. Image size: ``image_size`` when given, else each model's own (a Swin registered later
works unchanged).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from locallearn.config import default_split
from locallearn.context import MODE_NAMES, ContextMode
from locallearn.decoders import FEATURE_DECODERS
from locallearn.heads import HEADS
from locallearn.methods import METHODS
from locallearn.models import MODELS, create_model, is_import_path, model_family
from locallearn.split import SPLITS
from locallearn.validate import Int

REFERENCE = "e2e"  # every grid's reference: always run, every ratio is to it
DEFAULT_SPLIT = "default"  # per model: the split a training run gets when none is given


@dataclass(frozen=True)
class BenchConfig:
    """One configuration of a grid: what ``locallearn.build`` gets, and the batch it runs."""

    model: str
    method: str
    num_modules: int
    split: str | None  # None at K = 1
    context: str  # the mode the network runs with
    batch_size: int
    image_size: int
    feature_decoder: str | None = None  # FeatRecon's decoder; None for every other method
    aux_head: str | None = None  # a local method's head when the grid varies it; None: the method's own
    compiled: bool = False  # speed: every part torch.compile'd (training.runner.compile_parts)

    def build_options(self) -> dict:
        options: dict = dict(num_modules=self.num_modules, image_size=self.image_size)
        if self.split is not None:
            options["split"] = self.split
        if METHODS.get(self.method).varies_context:
            options["context"] = self.context
        if self.feature_decoder is not None:
            options["feature_decoder"] = self.feature_decoder
        if self.aux_head is not None:
            options["aux_head"] = self.aux_head
        return options

    @property
    def group(self) -> tuple[str, int, int]:
        """Configurations of one group share their ``e2e`` reference."""
        return (self.model, self.batch_size, self.image_size)

    @property
    def label(self) -> str:
        """A short name for tables and plots: method, context (if an axis) and split."""
        parts = [self.method]
        if METHODS.get(self.method).varies_context:
            parts.append(self.context)
        if self.feature_decoder is not None:
            parts.append(self.feature_decoder)
        if self.aux_head is not None:
            parts.append(f"{self.aux_head} head")
        if self.split is not None:
            parts.append(self.split)
        if self.compiled:
            parts.append("compiled")
        return " ".join(parts)

    def fields(self) -> dict:
        return dict(
            model=self.model,
            method=self.method,
            num_modules=self.num_modules,
            split=self.split,
            context=self.context,
            batch_size=self.batch_size,
            image_size=self.image_size,
            feature_decoder=self.feature_decoder,
            aux_head=self.aux_head,
            compiled=self.compiled,
        )


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@dataclass(frozen=True)
class GridSpec:
    models: tuple[str, ...] = ("resnet110",)
    methods: tuple[str, ...] = ("e2e", "checkpoint", "contsup")
    num_modules: tuple[int, ...] = (1, 2, 4, 8, 16)
    splits: tuple[str, ...] = (DEFAULT_SPLIT,)
    contexts: tuple[str, ...] = ("R0", "R1E")
    feature_decoders: tuple[str, ...] = ("linear",)  # FeatRecon only
    aux_heads: tuple[str | None, ...] = (None,)  # local methods; None: each method's own head
    batch_sizes: tuple[int, ...] = (32,)
    image_size: int | None = None  # None: each model's own
    compiled: tuple[bool, ...] = (False,)  # (False, True): every configuration also compiled (speed)

    def __post_init__(self) -> None:
        for name in ("models", "methods", "num_modules", "splits", "contexts", "feature_decoders", "aux_heads",
                     "batch_sizes", "compiled"):
            values = _as_tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name}: give at least one value.")
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))  # ordered, without repeats
        for model in self.models:  # a registered name, or a factory of one's own (package.module:factory)
            if not is_import_path(model):
                _check_name("models", model, MODELS.names())
        for method in self.methods:
            _check_name("methods", method, METHODS.names())
        for split in self.splits:
            _check_name("splits", split, [DEFAULT_SPLIT, *SPLITS.names()])
        for decoder in self.feature_decoders:
            _check_name("feature_decoders", decoder, FEATURE_DECODERS.names())
        for head in self.aux_heads:
            if head is not None:
                _check_name("aux_heads", head, HEADS.names())
        for mode in self.contexts:
            try:
                ContextMode.parse(mode)
            except ValueError:
                raise ValueError(
                    f"contexts: unknown mode {mode!r}; valid modes are {', '.join(MODE_NAMES)} "
                    f"(any Rn or RnE, n ≥ 1)."
                ) from None
        if not all(isinstance(c, bool) for c in self.compiled):
            raise ValueError(f"compiled: expected true or false, got {self.compiled!r}.")
        _check_positive("num_modules", self.num_modules)
        _check_positive("batch_sizes", self.batch_sizes)
        if self.image_size is not None:
            _check_positive("image_size", (self.image_size,))

    def expand(self) -> list[BenchConfig]:
        """The configurations to run, e2e first in every (model, batch size) group; compiled copies after
        the eager ones (their ratios are to the eager e2e)."""
        eager = self._expand_eager()
        configs = eager if False in self.compiled else []
        if True in self.compiled:
            configs = configs + [dataclasses.replace(c, compiled=True) for c in eager]
        return configs

    def not_run(self) -> list[str]:
        """What the grid asks for that ``expand`` leaves out by its rules, one line per method: K values a method
        does not run at (e2e and checkpoint: K = 1 only; a local method: K ≥ 2)."""
        notes = []
        for name in self.methods:
            single = METHODS.get(name).single_module
            skipped = [k for k in self.num_modules if (k > 1) == single]
            if skipped:
                rule = "trains the network as one module: it runs at K = 1 only" if single else \
                    "is a local method: it runs at K ≥ 2 only (at K = 1 it would be e2e)"
                ks = ", ".join(map(str, skipped))
                notes.append(f"note: {name} {rule}; K = {ks} left out for it")
        return notes

    def _expand_eager(self) -> list[BenchConfig]:
        configs = []
        for model in self.models:
            size = self.image_size or model_image_size(model)
            for batch in self.batch_sizes:
                one = dict(model=model, batch_size=batch, image_size=size)
                single = [m for m in (REFERENCE, *self.methods) if METHODS.get(m).single_module]
                for method in dict.fromkeys(single):
                    configs.append(BenchConfig(method=method, num_modules=1, split=None, context="R0", **one))
                for name in (m for m in self.methods if not METHODS.get(m).single_module):
                    method = METHODS.get(name)
                    own_context = method.preset(model_family(model))["context"]
                    contexts = self.contexts if method.varies_context else (own_context,)
                    decoders = self.feature_decoders if method.varies_feature_decoder else (None,)
                    for k in (k for k in self.num_modules if k > 1):
                        for split in dict.fromkeys(default_split(model, k) if s == DEFAULT_SPLIT else s
                                                   for s in self.splits):
                            for context in contexts:
                                for decoder in decoders:
                                    for head in self.aux_heads:
                                        configs.append(BenchConfig(method=name, num_modules=k, split=split,
                                                                   context=context, feature_decoder=decoder,
                                                                   aux_head=head, **one))
        return configs


def _check_name(option: str, value, valid: list[str]) -> None:
    if value not in valid:
        raise ValueError(f"{option}: unknown value {value!r}; valid values are {', '.join(valid)}.")


def _check_positive(option: str, values) -> None:
    for v in values:
        Int(1)(option, v)


@functools.lru_cache(maxsize=None)
def model_image_size(model: str) -> int:
    """The input size a model is built for by default (32 for the CIFAR ResNets)."""
    size = getattr(create_model(model), "image_size", None)
    if not isinstance(size, int):
        raise ValueError(f"image_size: {model} has no input size of its own (an nn.Sequential); pass --image-size.")
    return size


def parse_list(text: str | list | tuple, option: str, cast=str) -> tuple:
    """``"a,b,c"`` → ``("a", "b", "c")`` (cast each); the CLI's comma-separated grid values."""
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
    else:
        items = [t.strip() for t in str(text).split(",")]
    items = [t for t in items if t]
    if not items:
        raise ValueError(f"{option}: give at least one value.")
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        kind = "integers" if cast is int else "values"
        raise ValueError(f"{option}: expected comma-separated {kind}, got {text!r}.") from None
