"""ResNet-18 and ResNet-50 (He et al., CVPR 2016), the ImageNet ResNets, as ordered units built from Hugging Face
``transformers`` (``ResNetConfig`` / ``ResNetForImageClassification``). Nothing of ResNet is written here: HF's
stem and residual layers take and return (B, C, H, W) feature maps, so they are the units themselves. (The
CIFAR ResNets of docs/methods.md §2.1, ``resnet20`` .. ``resnet110``, are ``resnet_cifar.py``.)

Units and their keys ``(stage, block)``:

- ``(0, 0)``: the stem (HF's ``ResNetEmbeddings``): conv7×7 stride 2 → BN → ReLU → max-pool 3×3 stride 2;
- ``(s, b)``: residual block b of stage s = 1..4 (``ResNetBasicLayer`` for resnet18, ``ResNetBottleNeckLayer``
  for resnet50; the first block of stages 2-4 has stride 2 and a projection shortcut);
- ``(5, 0)``: global average pool → flatten → Linear (HF's pooler and classifier; the logits).

Feature maps at input size S: stem and stage 1 at S/4, stages 2, 3, 4 at S/8, S/16, S/32 (at S = 32 the last
stage is 1×1).

**Published configurations** (``microsoft/resnet-18``, ``microsoft/resnet-50`` on the hub): resnet18 basic
blocks, depths 2-2-2-2, widths 64-128-256-512; resnet50 bottleneck blocks (stride in the 3×3 convolution,
"ResNet v1.5"), depths 3-4-6-3, widths 256-512-1024-2048; both a 64-channel stem, ReLU, no downsampling in
the first stage. Parameters with 1000 classes: 11,689,512 and 25,557,032 (the torchvision counts); with 10
classes 11,181,642 and 23,528,522. ``model_kwargs`` may change ``embedding_size``, ``hidden_sizes``, ``depths``
and ``in_channels`` (HF's ``num_channels``); the block type is the model's name.

**Stages** (``split="stages"``): a module ends after a stage's last block, K = 4 one module per stage (the stem
goes with stage 1), K = 2 after stage 2. No ``paper`` split: the papers' tables are for the CIFAR ResNets.

**Pretrained** (``pretrained=``): a hub name or a ``save_pretrained`` directory of ``ResNetForImageClassification``
or ``ResNetModel``, checked against the requested architecture (``hf_common``); a fresh classifier where the
number of classes differs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from locallearn.models.base import Backbone
from locallearn.models.hf_common import Cut, check_positive_ints, keep_config, load_pretrained, stage_lists, stage_splits
from locallearn.models.registry import register_model, signature_options


class PoolClassifier(nn.Module):
    """Global average pool → flatten → Linear, (B, C, H, W) → (B, classes): HF's pooler and classifier."""

    def __init__(self, pool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pool = pool  # AdaptiveAvgPool2d(1)
        self.classifier = classifier  # Sequential(Flatten, Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x))  # (B, C, 1, 1) → (B, classes)


# --- architecture -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResNetSpec:
    """The fields of ``transformers.ResNetConfig`` that make a ResNet variant."""

    name: str
    layer_type: str  # "basic" or "bottleneck"
    embedding_size: int
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    in_channels: int = 3

    def __post_init__(self) -> None:
        check_positive_ints(self.name, embedding_size=self.embedding_size, in_channels=self.in_channels)
        stage_lists(self)
        if self.layer_type == "bottleneck" and any(w % 4 for w in self.hidden_sizes):
            raise ValueError(
                f"{self.name}: bottleneck blocks reduce the width by 4, so hidden_sizes must be multiples of 4, got "
                f"{self.hidden_sizes}."
            )

    def hf_config(self, num_classes: int) -> Any:
        from transformers import ResNetConfig

        return ResNetConfig(
            num_channels=self.in_channels,
            embedding_size=self.embedding_size,
            hidden_sizes=list(self.hidden_sizes),
            depths=list(self.depths),
            layer_type=self.layer_type,
            num_labels=num_classes,
        )

    def arch_fields(self) -> dict[str, tuple[str, Any]]:
        """What a pretrained checkpoint must share with this variant: option → (config field, value)."""
        return {
            "layer_type": ("layer_type", self.layer_type),
            "embedding_size": ("embedding_size", self.embedding_size),
            "hidden_sizes": ("hidden_sizes", self.hidden_sizes),
            "depths": ("depths", self.depths),
            "in_channels": ("num_channels", self.in_channels),
            "downsample_in_first_stage": ("downsample_in_first_stage", False),
            "downsample_in_bottleneck": ("downsample_in_bottleneck", False),
        }


RESNET18 = dict(layer_type="basic", embedding_size=64, hidden_sizes=(64, 128, 256, 512), depths=(2, 2, 2, 2))
RESNET50 = dict(layer_type="bottleneck", embedding_size=64, hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 6, 3))
_EXAMPLES = {"resnet18": "microsoft/resnet-18", "resnet50": "microsoft/resnet-50"}


class HFResNet(Backbone):
    """An ImageNet ResNet as units over ``transformers.ResNetForImageClassification``'s modules."""

    def __init__(self, spec: ResNetSpec, *, num_classes: int = 10, image_size: int = 224, hf_model=None) -> None:
        super().__init__()
        check_positive_ints(spec.name, image_size=image_size)
        self.spec, self.image_size, self.in_channels = spec, image_size, spec.in_channels
        if hf_model is None:
            from transformers import ResNetForImageClassification

            hf_model = ResNetForImageClassification(spec.hf_config(num_classes))  # HF's initialisation
        resnet = hf_model.resnet
        units: list[nn.Module] = [resnet.embedder]
        keys: list[Cut] = [(0, 0)]
        for s, stage in enumerate(resnet.encoder.stages, start=1):
            for b, layer in enumerate(stage.layers):
                units.append(layer)
                keys.append((s, b))
        units.append(PoolClassifier(resnet.pooler, hf_model.classifier))
        keys.append((len(spec.depths) + 1, 0))
        self.units = nn.ModuleList(units)
        self.unit_keys = keys

    def named_splits(self, name: str) -> dict[int, list[Cut]]:
        """``stages``: K = 4 after stages 1-3, K = 2 after stage 2 (``hf_common.stage_splits``)."""
        return stage_splits(self.spec.depths) if name == "stages" else {}


# --- factories ----------------------------------------------------------------------------------------------
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ResNetSpec) if f.name not in ("name", "layer_type"))


def create_resnet(
    name: str,
    defaults: dict[str, Any],
    *,
    num_classes: int = 10,
    image_size: int = 224,
    pretrained: str | os.PathLike | None = None,
    **overrides: Any,
) -> HFResNet:
    """A ResNet variant: ``defaults`` ← ``overrides`` (any of ``_SPEC_FIELDS``; ``create_model`` refuses others
    by name); ``pretrained`` a hub name or a ``save_pretrained`` directory."""
    spec = ResNetSpec(name=name, **{**defaults, **overrides})
    hf_model = None
    if pretrained:
        from transformers import ResNetForImageClassification

        hf_model = load_pretrained(
            pretrained, ResNetForImageClassification, model=name, family="ResNet", example=_EXAMPLES[name],
            wanted=spec.arch_fields(), num_classes=num_classes, width=spec.hidden_sizes[-1],
        )
    return keep_config(HFResNet(spec, num_classes=num_classes, image_size=image_size, hf_model=hf_model), hf_model)


_OPTIONS = (*signature_options(create_resnet, exclude=("name", "defaults")), *_SPEC_FIELDS)
for _name, _defaults in (("resnet18", RESNET18), ("resnet50", RESNET50)):
    register_model(_name, functools.partial(create_resnet, _name, _defaults), family="cnn", options=_OPTIONS)
