"""Backbones as ordered units. One file per model family; each registers its factories on import."""

from locallearn.models.base import Backbone
from locallearn.models.registry import (
    MODELS,
    check_model_options,
    create_model,
    model_accepts,
    default_aux_head,
    model_family,
    register_model,
)
from locallearn.models import resnet_cifar  # noqa: F401  (registers resnet20..resnet110)
from locallearn.models import swin  # noqa: F401  (registers swin_tiny, swin_cifar; imports transformers lazily)
from locallearn.models import hf_resnet  # noqa: F401  (registers resnet18, resnet50; imports transformers lazily)
from locallearn.models import vit  # noqa: F401  (registers vit_tiny, vit_small, vit_base; imports transformers lazily)
from locallearn.models import convnext  # noqa: F401  (registers convnext_tiny; imports transformers lazily)

__all__ = [
    "MODELS",
    "Backbone",
    "check_model_options",
    "create_model",
    "model_accepts",
    "default_aux_head",
    "model_family",
    "register_model",
]
