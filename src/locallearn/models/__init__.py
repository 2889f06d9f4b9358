"""Backbones as ordered units. One file per model family; each registers its factories on import. A user's
own network becomes units through ``custom.py`` (an ``nn.Sequential``, or named submodules via ``units``)."""

from locallearn.models.base import Backbone
from locallearn.models.custom import ModuleBackbone, as_backbone, units
from locallearn.models.registry import (
    MODELS,
    OBJECT,
    check_model,
    check_model_options,
    create_model,
    default_aux_head,
    is_import_path,
    model_accepts,
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
    "OBJECT",
    "Backbone",
    "ModuleBackbone",
    "as_backbone",
    "check_model",
    "check_model_options",
    "create_model",
    "default_aux_head",
    "is_import_path",
    "model_accepts",
    "model_family",
    "register_model",
    "units",
]
