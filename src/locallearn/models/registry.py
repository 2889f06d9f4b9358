"""The model registry: ``create_model(name, num_classes=..., image_size=...)``."""

from __future__ import annotations

from typing import Callable

from locallearn.models.base import Backbone
from locallearn.registry import Registry

MODELS: Registry[Callable[..., Backbone]] = Registry("model")


def register_model(name: str, factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
    return MODELS.register(name, factory)


def create_model(name: str, **kwargs) -> Backbone:
    return MODELS.get(name)(**kwargs)
