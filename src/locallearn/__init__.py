"""locallearn: greedy local learning (ContSup, FeatRecon, InfoPro, DGL) for deep networks.

    import locallearn as ll
    net = ll.build("resnet32", method="contsup", num_modules=16, context="R1E", dataset="cifar10")
    stats = ll.train_step(net, images, labels, optimizer)
    net.eval(); logits = net(images)
"""

from typing import Any as _Any

import torch as _torch
from torch import nn as _nn

from locallearn.config import NetConfig, resolve_net
from locallearn.context import MODE_NAMES as _MODE_NAMES
from locallearn.data import dataset_names as _dataset_names
from locallearn.decoders import FEATURE_DECODERS as _FEATURE_DECODERS
from locallearn.engine import train_step
from locallearn.heads import HEADS as _HEADS
from locallearn.losses import LOCAL_LOSSES as _LOCAL_LOSSES
from locallearn.methods import METHODS as _METHODS
from locallearn.models import MODELS as _MODELS
from locallearn.models import units
from locallearn.net import LocalNet, build_net, check_logits
from locallearn.split import SPLITS as _SPLITS
from locallearn.version import __version__


def build(model: str | _nn.Module, method: str = "contsup", **options: _Any) -> LocalNet:
    """Build a local network: ``model`` a name from the model registry, a factory's import path
    (``package.module:factory``), or your own module — a ``Backbone``, an ``nn.Sequential`` whose children are
    the units, or ``units(model, names)`` of a nested one; ``method`` from the method registry; ``options`` any
    field of ``NetConfig`` (num_modules, split, aux_head, local_loss, context, reconstruct, in_channels,
    image_size, ...) and ``dataset`` (which picks classes, channels, image size, normalisation and the λ tables).

    The classes: ``num_classes``, else the dataset's, and the model's classifier must give as many logits; with
    neither, a model of fixed width (your own, a factory without ``num_classes``) sets them, so that the
    auxiliary heads classify what the network does."""
    config = resolve_net(model, method, **options)
    given = "num_classes" in options or options.get("dataset") is not None
    obj = model if isinstance(model, _nn.Module) else None
    rng = _torch.get_rng_state()
    net = build_net(config, obj)
    width = tuple(net.output_shape)
    if not given and len(width) == 1 and width[0] != config.num_classes:  # built again as if num_classes were given
        _torch.set_rng_state(rng)
        net = build_net(resolve_net(model, method, **options, num_classes=width[0]), obj)
    elif given:
        check_logits(net)
    return net


def registries() -> dict[str, list[str]]:
    """Every name a user can choose, by kind (``locallearn list``)."""
    return {
        "models": _MODELS.names(),
        "methods": _METHODS.names(),
        "splits": _SPLITS.names(),
        "aux_heads": _HEADS.names(),
        "local_losses": _LOCAL_LOSSES.names(),
        "feature_decoders": _FEATURE_DECODERS.names(),
        "context_modes": list(_MODE_NAMES) + ["RnE / Rn (any n >= 1)"],
        "datasets": _dataset_names(),
    }


__all__ = ["LocalNet", "NetConfig", "__version__", "build", "build_net", "registries", "resolve_net", "train_step", "units"]
