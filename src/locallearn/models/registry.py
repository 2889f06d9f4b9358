"""The model registry: ``create_model(name, num_classes=..., image_size=...)``, and what it knows of each
model besides its factory — its family (``cnn`` or ``transformer``) and the keyword arguments it takes."""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

from locallearn.models.base import Backbone
from locallearn.registry import Registry

MODELS: Registry[Callable[..., Backbone]] = Registry("model")
# family → the auxiliary head ``aux_head="auto"`` picks: InfoPro's 1c2f for CNNs, FeatRecon's token head
# (LayerNorm → token mean → Linear) for transformers. Method presets may also differ by family
# (``Method.family_defaults``).
FAMILY_HEADS = {"cnn": "1c2f", "transformer": "token"}
_FAMILIES: dict[str, str] = {}
_OPTIONS: dict[str, tuple[str, ...] | None] = {}


def register_model(
    name: str, factory: Callable[..., Backbone], *, family: str = "cnn", options: Iterable[str] | None = None
) -> Callable[..., Backbone]:
    """``family``: a key of ``FAMILY_HEADS``. ``options``: the keyword arguments ``factory`` accepts
    (``model_kwargs`` plus ``num_classes`` and ``image_size``); by default read from its signature, and
    unchecked when that has ``**kwargs``."""
    if family not in FAMILY_HEADS:
        raise ValueError(f"family: unknown model family {family!r}; valid families are {', '.join(FAMILY_HEADS)}.")
    if options is None and not _takes_var_keywords(factory):
        options = signature_options(factory)
    registered = MODELS.register(name, factory)
    _FAMILIES[name] = family
    _OPTIONS[name] = tuple(options) if options is not None else None
    return registered


def signature_options(fn: Callable, *, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """The named keyword arguments of ``fn`` (``**kwargs`` aside), less ``exclude``."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skip = set(exclude)
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds and p.name not in skip)


def _takes_var_keywords(fn: Callable) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def model_family(name: str) -> str:
    """``cnn`` or ``transformer``: what per-family defaults (aux head, method presets) a model gets."""
    MODELS.get(name)
    return _FAMILIES[name]


def default_aux_head(name: str) -> str:
    """The auxiliary head a method's ``"auto"`` picks for a model: its family's (``FAMILY_HEADS``)."""
    return FAMILY_HEADS[model_family(name)]


def check_model_options(name: str, options: Iterable[str]) -> None:
    """Refuse a keyword argument the factory of model ``name`` does not take, naming the valid ones (what
    ``NetConfig.model_kwargs`` may hold)."""
    MODELS.get(name)
    valid = _OPTIONS[name]
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        raise ValueError(
            f"model_kwargs: unknown option {unknown[0]!r} for {name}; valid options are {', '.join(valid)}."
        )


def model_accepts(name: str, option: str) -> bool:
    """Whether the factory of model ``name`` takes keyword ``option`` (a factory with ``**kwargs`` takes any)."""
    MODELS.get(name)
    valid = _OPTIONS[name]
    return valid is None or option in valid


def create_model(name: str, **kwargs) -> Backbone:
    check_model_options(name, kwargs)
    return MODELS.get(name)(**kwargs)
