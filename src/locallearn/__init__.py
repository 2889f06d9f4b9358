"""locallearn: greedy local learning (ContSup, FeatRecon, InfoPro, DGL) for deep networks.

    import locallearn as ll
    net = ll.build("resnet32", method="contsup", num_modules=16, context="R1E", dataset="cifar10")
    stats = ll.train_step(net, images, labels, optimizer)
    net.eval(); logits = net(images)
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from locallearn.version import __version__

if _TYPE_CHECKING:
    from torch import nn as _nn

    from locallearn.config import NetConfig, resolve_net
    from locallearn.engine import train_step
    from locallearn.models import units
    from locallearn.net import LocalNet, build_net

# What `import locallearn` offers, imported on first use: importing the package imports no torch, so the
# command line answers --help and a Ctrl-C at once, and says "interrupted" instead of a traceback in torch's import.
_EXPORTS = {
    "NetConfig": "locallearn.config",
    "resolve_net": "locallearn.config",
    "train_step": "locallearn.engine",
    "units": "locallearn.models",
    "LocalNet": "locallearn.net",
    "build_net": "locallearn.net",
}


def __getattr__(name: str) -> _Any:
    """A name of ``_EXPORTS`` from its module, or a subpackage (``locallearn.training``), on first use."""
    if name in _EXPORTS:
        value = getattr(_import_module(_EXPORTS[name]), name)
    elif not name.startswith("_"):
        try:
            value = _import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def build(model: "str | _nn.Module", method: str = "contsup", **options: _Any) -> "LocalNet":
    """Build a local network: ``model`` a name from the model registry, a factory's import path
    (``package.module:factory``), or your own module — a ``Backbone``, an ``nn.Sequential`` whose children are
    the units, or ``units(model, names)`` of a nested one; ``method`` from the method registry; ``options`` any
    field of ``NetConfig`` (num_modules, split, aux_head, local_loss, context, reconstruct, in_channels,
    image_size, ...) and ``dataset`` (which picks classes, channels, image size, normalisation and the λ tables).

    The classes: ``num_classes``, else the dataset's, and the model's classifier must give as many logits; with
    neither, a model of fixed width (your own, a factory without ``num_classes``) sets them, so that the
    auxiliary heads classify what the network does."""
    import torch
    from torch import nn

    from locallearn.config import resolve_net
    from locallearn.net import build_net, check_logits

    config = resolve_net(model, method, **options)
    given = "num_classes" in options or options.get("dataset") is not None
    obj = model if isinstance(model, nn.Module) else None
    rng = torch.get_rng_state()
    net = build_net(config, obj)
    width = tuple(net.output_shape)
    if not given and len(width) == 1 and width[0] != config.num_classes:  # built again as if num_classes were given
        torch.set_rng_state(rng)
        net = build_net(resolve_net(model, method, **options, num_classes=width[0]), obj)
    elif given:
        check_logits(net)
    return net


def registries() -> dict[str, list[str]]:
    """Every name a user can choose, by kind (``locallearn list``)."""
    from locallearn.context import MODE_NAMES
    from locallearn.data import dataset_names
    from locallearn.decoders import FEATURE_DECODERS
    from locallearn.heads import HEADS
    from locallearn.losses import LOCAL_LOSSES
    from locallearn.methods import METHODS
    from locallearn.models import MODELS
    from locallearn.split import SPLITS

    return {
        "models": MODELS.names(),
        "methods": METHODS.names(),
        "splits": SPLITS.names(),
        "aux_heads": HEADS.names(),
        "local_losses": LOCAL_LOSSES.names(),
        "feature_decoders": FEATURE_DECODERS.names(),
        "context_modes": list(MODE_NAMES) + ["RnE / Rn (any n >= 1)"],
        "datasets": dataset_names(),
    }


__all__ = ["LocalNet", "NetConfig", "__version__", "build", "build_net", "registries", "resolve_net", "train_step", "units"]
