"""The model registry: ``create_model(name, num_classes=..., image_size=...)``."""

from __future__ import annotations

from typing import Callable

from locallearn.models.base import Backbone
from locallearn.registry import Registry

MODELS: Registry[Callable[..., Backbone]] = Registry("model")
_AUX_HEADS: dict[str, str] = {}


def register_model(name: str, factory: Callable[..., Backbone], *, aux_head: str = "1c2f") -> Callable[..., Backbone]:
    """``aux_head``: what ``aux_head="auto"`` means for this model (its family's head, see ``default_aux_head``)."""
    registered = MODELS.register(name, factory)
    _AUX_HEADS[name] = aux_head
    return registered


def default_aux_head(name: str) -> str:
    """The auxiliary head a method's ``"auto"`` picks for a model: InfoPro's ``1c2f`` for CNNs, FeatRecon's
    ``token`` head (LayerNorm → token mean → Linear) for transformers."""
    MODELS.get(name)
    return _AUX_HEADS[name]


def create_model(name: str, **kwargs) -> Backbone:
    return MODELS.get(name)(**kwargs)
