"""A user's own network as units: any ``nn.Sequential`` (its children are the units) or the named
submodules of a nested model (``units(model, [...])``), checked by one dry run (and, for ``units``, against the
model's own forward: ``check_forward``).

    net = ll.build(nn.Sequential(stem, block1, block2, head), method="contsup", num_modules=3, image_size=32)
    net = ll.build(ll.units(resnet, ["stem", "layer1", "layer2", "layer3", "layer4", "head"]), method="infopro",
                   dataset="cifar10")

The last unit maps features to logits (the network's classifier). Unit keys are the units' names — their
indices in a ``Sequential``, the names given to ``units`` — so explicit cuts name them (``split=[1, 3]`` or
``split=["layer2"]``). The input's channels and size come from the data (``dataset=``) or the options
(``in_channels=``, ``image_size=``); every unit's output shape comes from one forward of a blank batch, which
also checks that the units chain (unit i+1 takes unit i's output), naming the two units and the shape when
they do not. Such a model has no published split: the default is the computed one (``auto``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn

from locallearn.models.base import Backbone, modes_kept


class ModuleBackbone(Backbone):
    """Units taken from a user's module (module docstring)."""

    def __init__(self, units: "OrderedDict[str, nn.Module]", *, image_size: int, in_channels: int, family: str = "cnn"):
        super().__init__()
        if len(units) < 2:
            raise ValueError(
                f"model: a network cut into local modules needs at least 2 units (features, then a classifier), got "
                f"{len(units)}; give an nn.Sequential of its blocks, or cut a nested model with locallearn.units."
            )
        self.units = nn.ModuleList(units.values())
        self.unit_keys = [int(k) if k.isdigit() else k for k in units]
        self.image_size, self.in_channels, self.family = image_size, in_channels, family
        check_chain(self, [str(k) for k in units])


def check_chain(backbone: Backbone, names: list[str]) -> None:
    """One eval-mode forward of a blank batch of 2 through the units, refusing a pair that does not chain."""
    param = next(backbone.parameters(), None)
    kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    x = torch.zeros(2, backbone.in_channels, backbone.image_size, backbone.image_size, **kwargs)
    with modes_kept(backbone, training=False), torch.no_grad():
        for i, unit in enumerate(backbone.units):
            try:
                x = unit(x)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as err:  # a shape error of the unit's own code
                what = (f"unit {names[i]} ({type(unit).__name__}) cannot take the output of unit {names[i - 1]} "
                        f"({type(backbone.units[i - 1]).__name__})" if i else
                        f"unit {names[0]} ({type(unit).__name__}) cannot take the input image")
                hint = ("; if the model is right, give the data's in_channels and image_size, else make it take the "
                        "data's images (a factory with in_channels and image_size parameters receives them)"
                        if i == 0 else
                        "; the units must chain, the last mapping features to logits")
                raise ValueError(
                    f"model: {what}, of shape {tuple(x.shape[1:])} ({' '.join(str(err).split())[:160]}){hint}."
                ) from None
            if not isinstance(x, torch.Tensor):
                raise ValueError(
                    f"model: unit {names[i]} ({type(unit).__name__}) returns {type(x).__name__}, not a tensor; "
                    f"every unit must map a tensor to a tensor."
                )
    if x.dim() != 2:
        raise ValueError(
            f"model: the last unit ({names[-1]}, {type(backbone.units[-1]).__name__}) returns shape {tuple(x.shape[1:])}; "
            f"it must map features to logits (batch, classes), e.g. a pooling, flatten and Linear."
        )
    if x.shape[1] > 1 and bool((x >= 0).all()) and torch.allclose(x.sum(1), torch.ones_like(x[:, 0]), atol=1e-4):
        raise ValueError(
            f"model: the last unit ({names[-1]}, {type(backbone.units[-1]).__name__}) returns probabilities (each "
            f"row sums to 1: a Softmax at the end?); the network's and the modules' cross-entropy take logits: remove "
            f"the final Softmax (a LogSoftmax may stay)."
        )


def units(model: nn.Module, names: Iterable[str | tuple[str, nn.Module]]) -> nn.Sequential:
    """The units of a nested model, cut at its named submodules (dotted names reach deeper ones), as an
    ``nn.Sequential`` whose children are those modules themselves (not copies) under their names.

    A ``(name, module)`` pair adds a module of your own, e.g. the classifier of a model whose forward flattens
    before its ``fc``: ``("head", nn.Sequential(model.avgpool, nn.Flatten(), model.fc))``. Every parameter of
    ``model`` should belong to one unit; one that does not is not trained, and is refused."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"units: expected the model (an nn.Module) to cut, got {type(model).__name__}; a registered "
                         f"model is cut by its name without units(), e.g. locallearn.build('resnet32', ...).")
    chosen: "OrderedDict[str, nn.Module]" = OrderedDict()
    given: dict[str, nn.Module] = {}  # the same modules under the names as given
    submodules = dict(model.named_modules())
    for item in names:
        name, module = item if isinstance(item, tuple) else (item, submodules.get(item))
        if module is None:
            parent, owner = _deepest_parent(model, name, submodules)
            children = [n for n, _ in owner.named_children()]
            where = f"the children of {parent!r}" if parent else "its children"
            raise ValueError(f"units: {type(model).__name__} has no submodule {name!r}; {where} are "
                             f"{', '.join(children) or 'none'}.")
        key = name.replace(".", "_")  # a child's name may not hold a dot
        if key in chosen:
            raise ValueError(f"units: {name!r} is named twice.")
        if any(module is other for other in chosen.values()):
            raise ValueError(f"units: {name!r} is a module already given under another name; each unit once.")
        for other_name, other in given.items():  # a unit inside another would run twice, trained by two modules
            inner_outer = ((name, other_name) if any(m is module for m in other.modules()) else
                           (other_name, name) if any(m is other for m in module.modules()) else None)
            if inner_outer:
                raise ValueError("units: {!r} lies inside {!r}; give one or the other, not both.".format(*inner_outer))
        chosen[key] = module
        given[name] = module
    taken = {id(p) for m in chosen.values() for p in m.parameters()}
    left = [n for n, p in model.named_parameters() if id(p) not in taken]
    if left:
        raise ValueError(
            f"units: {len(left)} parameter(s) of {type(model).__name__} belong to no unit (first: {left[0]}); add the "
            f"submodule that holds them, or they would never be trained."
        )
    cut = nn.Sequential(chosen)
    cut.__dict__[WHOLE] = (model, list(chosen.values()))  # not a submodule: compared with once, by ``check_forward``
    return cut


WHOLE = "_locallearn_whole_model"  # the model ``units`` cut, kept on its Sequential for ``check_forward``


def check_forward(backbone: Backbone, whole: nn.Module, names: list[str]) -> None:
    """Refuse units that do not compute ``whole``'s own forward: in eval mode, a random batch through the units
    in turn against ``whole(batch)``. A forward that adds a unit's input to a later unit's output (a skip
    connection) or applies a function between units (``F.relu``, ``torch.flatten``) computes a network the units
    alone do not, which training would then train instead, without a word. Nothing is compared where ``whole``
    cannot take the batch alone or does not return logits of the units' shape (a forward of other arguments, an
    output object), nor where it is random in eval mode (two calls differ); log-probabilities (a forward ending in
    log_softmax) are the units' logits as cross-entropy takes them."""
    param = next(backbone.parameters(), None)
    kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, backbone.in_channels, backbone.image_size, backbone.image_size, generator=generator).to(**kwargs)
    with modes_kept(whole, backbone, training=False), torch.no_grad():
        chained = x.clone()
        for unit in backbone.units:
            chained = unit(chained)
        try:
            own, again = whole(x.clone()), whole(x.clone())
        except Exception:  # a forward that takes more than the image: nothing to compare with
            return
    if not isinstance(own, torch.Tensor) or own.shape != chained.shape or own.dtype != chained.dtype:
        return
    if not isinstance(again, torch.Tensor) or not torch.equal(own, again):  # random even in eval mode
        return
    scale = max(float(own.abs().max()), 1.0)
    difference = min(float((own - chained).abs().max()), float((own - chained.log_softmax(dim=-1)).abs().max()))
    if not difference <= 1e-4 * scale:  # NaN differs too
        raise ValueError(
            f"model: the units ({', '.join(names)}) run one after another do not compute {type(whole).__name__}'s "
            f"forward (its logits differ by up to {difference:.3g} on a random batch): the forward does something "
            f"between them — a skip connection, or a function such as F.relu or torch.flatten — that training would "
            f"leave out; put each such step inside a unit (a (name, module) pair of your own), so that the units "
            f"alone compute the model."
        )


def _deepest_parent(model: nn.Module, name: str, submodules: dict) -> tuple[str, nn.Module]:
    """The longest dotted prefix of ``name`` that is a submodule of ``model`` ('' for the model itself)."""
    parts = name.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in submodules:
            return prefix, submodules[prefix]
    return "", model


def check_backbone(backbone: Backbone, *, chain: bool) -> None:
    """A ``Backbone`` subclass against its contract (models/base.py), refused in one line naming what is wrong:
    ``units`` an ``nn.ModuleList`` of at least 2 units, one ``unit_keys`` entry per unit, an ``image_size``;
    with ``chain`` (a model of one's own, not a registered one), each unit takes the previous one's output
    (``check_chain``: one forward of a blank batch)."""
    name = type(backbone).__name__
    units = getattr(backbone, "units", None)
    if not isinstance(units, nn.ModuleList) or len(units) < 2:
        got = f"{len(units)} unit" if isinstance(units, nn.ModuleList) else type(units).__name__
        raise ValueError(f"model: {name}.units must be an nn.ModuleList of at least 2 units (features, then a "
                         f"classifier), got {got}; fill it in __init__ (docs/architecture.md, adding a backbone).")
    keys = getattr(backbone, "unit_keys", None)
    if keys is None or len(keys) != len(units):
        got = "none" if keys is None else f"{len(keys)}"
        raise ValueError(f"model: {name}.unit_keys must name each of its {len(units)} units (how cuts name them), "
                         f"got {got}; give one key per unit.")
    if not isinstance(getattr(backbone, "image_size", None), int):
        raise ValueError(f"model: {name}.image_size must be the input size the backbone is built for (an int), "
                         f"got {getattr(backbone, 'image_size', None)!r}.")
    if chain:
        check_chain(backbone, [str(k) for k in keys])


def as_backbone(model: nn.Module, *, image_size: int | None, in_channels: int, chain: bool = True) -> Backbone:
    """A registered or user-made ``Backbone`` as it is, checked (``check_backbone``; ``chain``: also run its
    units once, for a backbone not in the registry); an ``nn.Sequential`` cut into its children."""
    if isinstance(model, Backbone):
        check_backbone(model, chain=chain and not isinstance(model, ModuleBackbone))  # ModuleBackbone chained itself
        return model
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"model: {type(model).__name__} is neither a Backbone nor an nn.Sequential; give the blocks in order as an "
            f"nn.Sequential, or cut it at its submodules with locallearn.units(model, [names...])."
        )
    if image_size is None:
        raise ValueError(
            "image_size: a model of your own needs the input size for its dry run; pass image_size=... (and "
            "in_channels=...), or dataset=..."
        )
    backbone = ModuleBackbone(OrderedDict(model.named_children()), image_size=image_size, in_channels=in_channels,
                              family=getattr(model, "family", "cnn"))
    whole, cut = model.__dict__.get(WHOLE, (None, None))  # a model cut by ``units``, unless a unit was replaced since
    if whole is not None and len(cut) == len(backbone.units) and all(a is b for a, b in zip(cut, backbone.units)):
        check_forward(backbone, whole, [str(k) for k in backbone.unit_keys])
    return backbone
