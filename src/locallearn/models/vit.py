"""Vision Transformers (Dosovitskiy et al., ICLR 2021): ViT-Tiny/16, ViT-Small/16, ViT-Base/16 as ordered units
built from Hugging Face ``transformers`` (``ViTConfig`` / ``ViTForImageClassification``). The encoder layers,
patch projection, final LayerNorm and classifier are transformers' modules; the units only adapt the layout.

Units and their keys ``(stage, block)`` (ViT has one stage):

- ``(0, 0)``: the patch embedding — conv patch projection (HF's ``ViTPatchEmbeddings``) + position embedding
  of the patch tokens → dropout;
- ``(1, b)``: encoder layer b = 0..L−1 (HF's ``ViTLayer``: pre-norm attention and MLP, each residual);
- ``(2, 0)``: the final LayerNorm → mean over the patch tokens → Linear (the logits).

**Our choice: no CLS token, global average pooling.** Every unit hands on the patch tokens as a (B, C, H/p, W/p)
feature map, the layout of Swin's units here (tokens (B, H·W, C) as a permuted view, no copy), and the network
classifies the token mean after the final LayerNorm — the "global average pooling" ViT (Dosovitskiy et al.,
Appendix D.3; Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k"; FeatRecon's token head does the
same). A CLS token would be one token that is not a pixel of any map: dropping it is what lets everything
the core builds on feature maps run on ViT — ContSup's context encoders, the ``linear``/``1c2f``/``dgl``/``token``
heads, InfoPro's image decoder and FeatRecon's feature decoders. (``aux_head="auto"`` gives every local module
the token head, the same head as the network's own.) With ``pretrained``, every weight loads except the CLS
token, which is dropped, and its position embedding, which is dropped from the position table; a classifier
trained on the CLS token is kept (if the classes match) but now sees token means, so fine-tuning is expected.
Checkpoints: a hub name or a ``save_pretrained`` directory of ``ViTForImageClassification`` or ``ViTModel``
(its pooler is not used), checked against the requested architecture (``hf_common``, also for offline use).

**Image size.** The position table is built for ``image_size`` (default 224), which must be a multiple of the
patch size; other inputs are refused. A pretrained table for another grid is resized once, at loading, by
bicubic interpolation (as transformers' ``interpolate_pos_encoding`` does at each forward).

**Published configurations**: patch 16, 12 layers, MLP 4×, hidden 192 / 384 / 768 with 3 / 6 / 12 heads
(``google/vit-base-patch16-224``; Tiny and Small are DeiT's widths, ``facebook/deit-tiny-patch16-224`` and
``facebook/deit-small-patch16-224``, ``model_type`` "vit" on the hub). With 1000 classes transformers' ViT has
5,717,416 / 22,050,664 / 86,567,656 parameters; ours has 2·hidden fewer (the CLS token and its position), and
with 10 classes 5,525,962 / 21,668,746 / 85,804,810. ``model_kwargs`` may change ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size`` and ``patch_size``; the input channels
(HF's ``num_channels``) are ``in_channels``, an option of the network's own (or the dataset's).

**Stages** (``split="stages"``): ViT is isotropic, so a "stage" is an equal group of encoder layers: K modules
of L/K layers each for every K ≥ 2 that divides L (2, 3, 4, 6, 12 for 12 layers); the patch embedding goes
with the first group, the classifier with the last. Family ``transformer``: ``aux_head="auto"`` is the token
head, InfoPro is InfoPro-Transformer (``family_defaults`` of the ``infopro`` method, ``methods/infopro.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.models.base import Backbone
from locallearn.models.hf_common import Cut, check_positive_ints, keep_config, load_pretrained
from locallearn.models.registry import register_model, signature_options
from locallearn.models.tokens import TokenClassifier, to_map, to_tokens


# --- units ------------------------------------------------------------------------------------------------
class PatchEmbedUnit(nn.Module):
    """(B, C_in, S, S) image → (B, C, S/p, S/p) patch embeddings with their positions; no CLS token."""

    def __init__(self, embeddings: nn.Module, grid: int) -> None:
        super().__init__()
        self.patch_embeddings = embeddings.patch_embeddings  # transformers' ViTPatchEmbeddings (the conv)
        self.position_embeddings = nn.Parameter(patch_positions(embeddings.position_embeddings, grid))
        self.dropout = embeddings.dropout
        self.grid = grid
        self.patch_size = self.patch_embeddings.patch_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.grid * self.patch_size
        if x.shape[-2:] != (side, side):
            raise ValueError(
                f"ViT input is {x.shape[-2]}×{x.shape[-1]} but its position table is for {side}×{side} images; "
                f"build the model with image_size={x.shape[-1]}."
            )
        tokens = self.patch_embeddings(x) + self.position_embeddings  # (B, N, C)
        return to_map(self.dropout(tokens), self.grid, self.grid)


def patch_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """transformers' position table (1, 1 + N, C), CLS position first, → the patch positions (1, grid², C),
    bicubically resized where N ≠ grid² (as ``ViTEmbeddings.interpolate_pos_encoding``)."""
    patches = table.detach()[:, 1:]  # (1, N, C): the CLS position is dropped
    n, c = patches.shape[1], patches.shape[2]
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"pretrained: the position table has {n} patch positions, not a square grid.")
    if side != grid:
        maps = patches.reshape(1, side, side, c).permute(0, 3, 1, 2)  # (1, C, side, side)
        maps = F.interpolate(maps.float(), size=(grid, grid), mode="bicubic", align_corners=False).to(patches.dtype)
        patches = maps.permute(0, 2, 3, 1).reshape(1, grid * grid, c)
    return patches.clone()


class BlockUnit(nn.Module):
    """One encoder layer: (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer  # transformers' ViTLayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return to_map(self.layer(to_tokens(x)), h, w)  # (B, H·W, C) through the layer, back to the map view


# --- architecture -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViTSpec:
    """The fields of ``transformers.ViTConfig`` that make a ViT variant."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int = 16
    in_channels: int = 3

    def __post_init__(self) -> None:
        check_positive_ints(self.name, **{f: getattr(self, f) for f in _SPEC_FIELDS})
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{self.name}: num_attention_heads = {self.num_attention_heads} must divide hidden_size = "
                f"{self.hidden_size}."
            )

    def grid(self, image_size: int) -> int:
        check_positive_ints(self.name, image_size=image_size)
        if image_size % self.patch_size:
            raise ValueError(
                f"image size: {image_size} is not a multiple of {self.name}'s patch size {self.patch_size}; use a "
                f"multiple, or model_kwargs={{'patch_size': ...}} that divides it."
            )
        return image_size // self.patch_size

    def hf_config(self, num_classes: int, image_size: int) -> Any:
        from transformers import ViTConfig

        return ViTConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            patch_size=self.patch_size,
            num_channels=self.in_channels,
            image_size=image_size,
            num_labels=num_classes,
        )

    def arch_fields(self) -> dict[str, tuple[str, Any]]:
        """What a pretrained checkpoint must share with this variant: option → (config field, value)."""
        return {f: ("num_channels" if f == "in_channels" else f, getattr(self, f)) for f in _SPEC_FIELDS}


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ViTSpec) if f.name != "name")

VIT_TINY = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768)
VIT_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_EXAMPLES = {
    "vit_tiny": "facebook/deit-tiny-patch16-224",
    "vit_small": "facebook/deit-small-patch16-224",
    "vit_base": "google/vit-base-patch16-224",
}


class ViTBackbone(Backbone):
    """A ViT classifier (token mean, no CLS token) as units over ``ViTForImageClassification``'s modules."""

    def __init__(self, spec: ViTSpec, *, num_classes: int = 10, image_size: int = 224, hf_model=None) -> None:
        super().__init__()
        grid = spec.grid(image_size)
        self.spec, self.image_size, self.in_channels = spec, image_size, spec.in_channels
        if hf_model is None:
            from transformers import ViTForImageClassification

            hf_model = ViTForImageClassification(spec.hf_config(num_classes, image_size))  # HF's initialisation
        vit = hf_model.vit
        units: list[nn.Module] = [PatchEmbedUnit(vit.embeddings, grid)]
        keys: list[Cut] = [(0, 0)]
        for b, layer in enumerate(vit.layers):
            units.append(BlockUnit(layer))
            keys.append((1, b))
        units.append(TokenClassifier(vit.layernorm, hf_model.classifier))
        keys.append((2, 0))
        self.units = nn.ModuleList(units)
        self.unit_keys = keys

    def named_splits(self, name: str) -> dict[int, list[Cut]]:
        """``stages``: K equal groups of encoder layers, for every K ≥ 2 dividing the number of layers."""
        if name != "stages":
            return {}
        layers = self.spec.num_hidden_layers
        groups = [k for k in range(2, layers + 1) if layers % k == 0]
        return {k: [(1, layers // k * (m + 1) - 1) for m in range(k - 1)] for k in groups}


# --- factories ----------------------------------------------------------------------------------------------
def create_vit(
    name: str,
    defaults: dict[str, Any],
    *,
    num_classes: int = 10,
    image_size: int = 224,
    pretrained: str | os.PathLike | None = None,
    **overrides: Any,
) -> ViTBackbone:
    """A ViT variant: ``defaults`` ← ``overrides`` (any of ``_SPEC_FIELDS``; ``create_model`` refuses others by
    name); ``pretrained`` a hub name or a ``save_pretrained`` directory (``ViTForImageClassification`` or
    ``ViTModel``)."""
    spec = ViTSpec(name=name, **{**defaults, **overrides})
    spec.grid(image_size)  # refuse a size the patches do not tile before loading anything
    hf_model = None
    if pretrained:
        from transformers import ViTForImageClassification

        hf_model = load_pretrained(
            pretrained, ViTForImageClassification, model=name, family="ViT", example=_EXAMPLES[name],
            wanted=spec.arch_fields(), num_classes=num_classes, width=spec.hidden_size,
        )
    return keep_config(ViTBackbone(spec, num_classes=num_classes, image_size=image_size, hf_model=hf_model), hf_model)


_OPTIONS = (*signature_options(create_vit, exclude=("name", "defaults")), *_SPEC_FIELDS)
for _name, _defaults in (("vit_tiny", VIT_TINY), ("vit_small", VIT_SMALL), ("vit_base", VIT_BASE)):
    register_model(_name, functools.partial(create_vit, _name, _defaults), family="transformer", options=_OPTIONS)
