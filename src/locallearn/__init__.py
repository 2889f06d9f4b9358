"""locallearn: greedy local learning (ContSup, FeatRecon, InfoPro, DGL) for deep networks.

    import locallearn as ll
    net = ll.build("resnet32", method="contsup", num_modules=16, context="R1E", dataset="cifar10")
    stats = ll.train_step(net, images, labels, optimizer)
    net.eval(); logits = net(images)
"""

from __future__ import annotations

from typing import Any

from locallearn.config import METHODS, NetConfig, make_config
from locallearn.context import MODE_NAMES
from locallearn.data.specs import DATASETS
from locallearn.engine import train_step
from locallearn import featrecon  # noqa: F401  (registers the featrecon method, token head, feature decoders)
from locallearn.decoders import FEATURE_DECODERS
from locallearn.heads import HEADS
from locallearn.losses import LOCAL_LOSSES
from locallearn.models import MODELS
from locallearn.net import LocalNet, build_net

__version__ = "0.1.0"


def build(model: str, method: str = "contsup", **options: Any) -> LocalNet:
    """Build a local network: ``model`` from the model registry, ``method`` a preset, ``options`` any
    field of ``NetConfig`` (num_modules, split, aux_head, local_loss, context, reconstruct, dataset, ...)."""
    return build_net(make_config(model, method, **options))


def registries() -> dict[str, list[str]]:
    """Every name a user can choose, by kind (``locallearn list``)."""
    return {
        "models": MODELS.names(),
        "methods": METHODS.names(),
        "aux_heads": HEADS.names(),
        "local_losses": LOCAL_LOSSES.names(),
        "feature_decoders": FEATURE_DECODERS.names(),
        "context_modes": list(MODE_NAMES) + ["RnE / Rn (any n >= 1)"],
        "datasets": DATASETS.names(),
    }


__all__ = ["LocalNet", "NetConfig", "build", "make_config", "registries", "train_step"]
