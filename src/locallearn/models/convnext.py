"""ConvNeXt-Tiny (Liu et al., CVPR 2022) as ordered units built from Hugging Face ``transformers``
(``ConvNextConfig`` / ``ConvNextForImageClassification``). Nothing of ConvNeXt is written here: HF's stem,
downsampling layers and blocks take and return (B, C, H, W) feature maps, so they are the units themselves.

Units and their keys ``(stage, block)``:

- ``(0, 0)``: the patchify stem (HF's ``ConvNextEmbeddings``): conv p×p stride p → LayerNorm;
- ``(s, b)``: ConvNeXt block b of stage s = 1..4 (HF's ``ConvNextLayer``: depthwise 7×7 conv → LayerNorm →
  Linear 4× → GELU → Linear → layer scale, residual with drop path);
- ``(s, depth_s)``: the downsampling layer between stage s and s + 1 (s = 1..3): LayerNorm → conv 2×2 stride 2.
  HF holds it at the start of stage s + 1; keyed as Swin's patch merging is, after the stage it follows;
- ``(5, 0)``: global average pool → LayerNorm → Linear (HF's pooled-feature norm and classifier; the logits).

Feature maps at input size S: stage s at S/(p·2^(s−1)), i.e. S/4 .. S/32 with p = 4; S must be at least
p·2^(stages−1) (32 for ConvNeXt-Tiny).

**Published configuration** (``facebook/convnext-tiny-224``): patch 4, depths 3-3-9-3, widths 96-192-384-768,
layer scale 1e-6; 28,589,128 parameters with 1000 classes, 27,827,818 with 10. ``model_kwargs`` may change
``patch_size``, ``depths``, ``hidden_sizes``, ``in_channels`` (HF's ``num_channels``) and ``drop_path_rate``.
**Our choice:** drop path 0.1 by default, the paper's ImageNet-1K setting for ConvNeXt-T (the hub's config says
0.0, an inference setting), as Swin-Tiny here; tests pass 0.0.

**Stages** (``split="stages"``): a module ends after a stage's last block, the downsampling opens the next
module — K = 4 one module per stage, K = 2 after stage 2 (``hf_common.stage_splits``).

**Pretrained** (``pretrained=``): a hub name or a ``save_pretrained`` directory of
``ConvNextForImageClassification`` or ``ConvNextModel``, checked against the requested architecture
(``hf_common``); a fresh classifier where the number of classes differs.
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


class NormClassifier(nn.Module):
    """Global average pool → LayerNorm → Linear, (B, C, H, W) → (B, classes): ConvNeXt's own head."""

    def __init__(self, norm: nn.LayerNorm, fc: nn.Module) -> None:
        super().__init__()
        self.norm, self.fc = norm, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean(dim=(2, 3))))  # (B, C, H, W) → (B, C) → (B, classes)


# --- architecture -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvNextSpec:
    """The fields of ``transformers.ConvNextConfig`` that make a ConvNeXt variant."""

    name: str
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    patch_size: int = 4
    in_channels: int = 3
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        check_positive_ints(self.name, patch_size=self.patch_size, in_channels=self.in_channels)
        stage_lists(self)
        rate = self.drop_path_rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
            raise ValueError(f"{self.name}: drop_path_rate must be in [0, 1), got {rate!r}.")

    def check_image_size(self, image_size: int) -> None:
        """Every stage must keep a pixel: at least patch · 2^(stages−1) (32 for ConvNeXt-Tiny)."""
        check_positive_ints(self.name, image_size=image_size)
        smallest = self.patch_size * 2 ** (len(self.depths) - 1)
        if image_size < smallest:
            raise ValueError(
                f"image size: {image_size} is too small for {self.name}: patch {self.patch_size} and "
                f"{len(self.depths) - 1} downsamplings need at least {smallest}."
            )

    def hf_config(self, num_classes: int) -> Any:
        from transformers import ConvNextConfig

        return ConvNextConfig(
            num_channels=self.in_channels,
            patch_size=self.patch_size,
            num_stages=len(self.depths),
            hidden_sizes=list(self.hidden_sizes),
            depths=list(self.depths),
            drop_path_rate=self.drop_path_rate,
            num_labels=num_classes,
        )

    def arch_fields(self) -> dict[str, tuple[str, Any]]:
        """What a pretrained checkpoint must share with this variant: option → (config field, value)."""
        return {
            "patch_size": ("patch_size", self.patch_size),
            "hidden_sizes": ("hidden_sizes", self.hidden_sizes),
            "depths": ("depths", self.depths),
            "in_channels": ("num_channels", self.in_channels),
        }


CONVNEXT_TINY = dict(hidden_sizes=(96, 192, 384, 768), depths=(3, 3, 9, 3))


class ConvNextBackbone(Backbone):
    """A ConvNeXt classifier as units over ``transformers.ConvNextForImageClassification``'s modules."""

    def __init__(self, spec: ConvNextSpec, *, num_classes: int = 10, image_size: int = 224, hf_model=None) -> None:
        super().__init__()
        spec.check_image_size(image_size)
        self.spec, self.image_size, self.in_channels = spec, image_size, spec.in_channels
        if hf_model is None:
            from transformers import ConvNextForImageClassification

            hf_model = ConvNextForImageClassification(spec.hf_config(num_classes))  # HF's initialisation
        convnext = hf_model.convnext
        units: list[nn.Module] = [convnext.embeddings]
        keys: list[Cut] = [(0, 0)]
        for s, stage in enumerate(convnext.encoder.stages, start=1):
            if len(stage.downsampling_layer):  # stages 2..: LayerNorm → conv 2×2 stride 2, keyed after stage s − 1
                units.append(nn.Sequential(*stage.downsampling_layer))
                keys.append((s - 1, spec.depths[s - 2]))
            for b, layer in enumerate(stage.layers):
                units.append(layer)
                keys.append((s, b))
        units.append(NormClassifier(convnext.layernorm, hf_model.classifier))
        keys.append((len(spec.depths) + 1, 0))
        self.units = nn.ModuleList(units)
        self.unit_keys = keys

    def named_splits(self, name: str) -> dict[int, list[Cut]]:
        """``stages``: K = 4 after stages 1-3, K = 2 after stage 2; the downsampling opens the next module."""
        return stage_splits(self.spec.depths) if name == "stages" else {}


# --- factories ----------------------------------------------------------------------------------------------
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ConvNextSpec) if f.name != "name")


def create_convnext(
    name: str,
    defaults: dict[str, Any],
    *,
    num_classes: int = 10,
    image_size: int = 224,
    pretrained: str | os.PathLike | None = None,
    **overrides: Any,
) -> ConvNextBackbone:
    """A ConvNeXt variant: ``defaults`` ← ``overrides`` (any of ``_SPEC_FIELDS``; ``create_model`` refuses others
    by name); ``pretrained`` a hub name or a ``save_pretrained`` directory."""
    spec = ConvNextSpec(name=name, **{**defaults, **overrides})
    spec.check_image_size(image_size)  # refuse a size before loading anything
    hf_model = None
    if pretrained:
        from transformers import ConvNextForImageClassification

        hf_model = load_pretrained(
            pretrained, ConvNextForImageClassification, model=name, family="ConvNeXt",
            example="facebook/convnext-tiny-224", wanted=spec.arch_fields(), num_classes=num_classes,
            width=spec.hidden_sizes[-1], drop_path_rate=spec.drop_path_rate,
        )
    return keep_config(ConvNextBackbone(spec, num_classes=num_classes, image_size=image_size, hf_model=hf_model), hf_model)


_OPTIONS = (*signature_options(create_convnext, exclude=("name", "defaults")), *_SPEC_FIELDS)
register_model(
    "convnext_tiny", functools.partial(create_convnext, "convnext_tiny", CONVNEXT_TINY), family="cnn", options=_OPTIONS,
)
