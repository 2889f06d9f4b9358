"""Swin Transformer (Liu et al., ICCV 2021) as ordered units, built from Hugging Face ``transformers``
modules (docs/methods.md §2.3): FeatRecon's backbone. Nothing of Swin is written here; the units only adapt the
calling convention of ``SwinEmbeddings``, ``SwinLayer`` and ``SwinPatchMerging``.

Units and their keys ``(stage, block)``:

- ``(0, 0)``: the patch embedding (conv patch projection → LayerNorm);
- ``(s, b)``: Swin block b of stage s = 1..4 (even blocks window attention, odd blocks shifted windows);
- ``(s, depth_s)``: the patch merging after stage s's blocks (s = 1..3);
- ``(5, 0)``: final LayerNorm → token mean → Linear classifier (the logits).

**Layout between units.** Every unit hands on a (B, C, H, W) feature map — the layout of the ResNets — so
that everything the core builds on feature maps works on Swin unchanged: ContSup's context encoders, the
``linear``/``1c2f``/``dgl`` heads, InfoPro's image decoder, ``unit_shapes`` and the memory meters. It
costs nothing: a unit returns its tokens (B, H·W, C) as the permuted *view* (B, C, H, W) (channels-last
strides), and the next unit's ``flatten(2).transpose(1, 2)`` recovers the very same contiguous tokens,
so no copy is made and autograd saves one storage, not two.

**Input size.** ``image_size`` is what the data delivers, ``resolution`` what the network runs at
(default: ``image_size``). FeatRecon trains Swin-Tiny at 224 on 32×32 and 96×96 datasets; pass
``model_kwargs={"resolution": 224}`` and the first unit resizes its input bilinearly, so the data
pipeline, InfoPro's reconstruction target and ContSup's image encoder all keep the dataset's own size.

**Stages** (``split="stages"``, also this backbone's ``"paper"`` split): Swin's paper (Fig. 3) opens
stages 2-4 with their patch merging (HF's ``SwinStage`` closes stages with it instead). Cuts follow the
paper: a module ends after a stage's last block, the merging opens the next module. K = 2 cuts after
stage 2, K = 4 after stages 1, 2 and 3 (docs/methods.md §6). ``balanced`` has no published table for Swin and
is computed from measured activation bytes (``auto``); ``uniform`` and explicit cuts work as for ResNets.

**Methods.** Every method runs on Swin: ``e2e``, ``checkpoint``, ``greedy`` (pool → Linear head), ``dgl``,
``featrecon``, ``infopro`` (InfoPro-Transformer: the token head and InfoPro's image decoder, with
cross-entropy and λ = (1, 1, 1, 1), the method's ``transformer`` defaults, ``family_defaults`` in ``methods/infopro.py``) and
``contsup`` — with every context mode, since every boundary between units is a (C, H, W) map, all that
ContSup's encoders need. ``aux_head="auto"`` (the presets' default) is the token head here.
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
from locallearn.models.tokens import TokenClassifier, to_map, to_tokens
from locallearn.models.hf_common import keep_config, load_pretrained, stage_splits
from locallearn.models.registry import register_model, signature_options
from locallearn.validate import Int

Cut = tuple[int, int]


# --- units ------------------------------------------------------------------------------------------------
class PatchEmbedUnit(nn.Module):
    """(B, 3, S, S) image → (B, C, S/p, S/p) patch embeddings; resizes to ``resolution`` first if S differs."""

    def __init__(self, embeddings: nn.Module, resolution: int) -> None:
        super().__init__()
        self.embeddings = embeddings  # transformers' SwinEmbeddings
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            shrinking = x.shape[-1] > self.resolution
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=shrinking)
        tokens, (h, w) = self.embeddings(x)  # (B, h·w, C)
        return to_map(tokens, h, w)


class BlockUnit(nn.Module):
    """One Swin block: (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block  # transformers' SwinLayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out, _ = self.block(to_tokens(x), (h, w))  # (B, H·W, C), attention weights (unused)
        return to_map(out, h, w)


class MergeUnit(nn.Module):
    """Patch merging: (B, C, H, W) → (B, 2C, H/2, W/2)."""

    def __init__(self, merge: nn.Module) -> None:
        super().__init__()
        self.merge = merge  # transformers' SwinPatchMerging

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return to_map(self.merge(to_tokens(x), (h, w)), h // 2, w // 2)


# --- architecture -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwinSpec:
    """The fields of ``transformers.SwinConfig`` that make a Swin variant, plus the input resolution."""

    name: str
    resolution: int
    patch_size: int
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    in_channels: int = 3  # SwinConfig's num_channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        for field_name in ("resolution", "patch_size", "embed_dim", "window_size", "in_channels"):
            value = getattr(self, field_name)
            Int(1)(f"{self.name}: {field_name}", value)
        if not self.depths or len(self.depths) != len(self.num_heads) or min(self.depths) < 1:
            raise ValueError(
                f"{self.name}: depths and num_heads need one positive entry per stage, got depths {self.depths} "
                f"and num_heads {self.num_heads}."
            )
        for s, heads in enumerate(self.num_heads):
            if heads < 1 or self.stage_dim(s) % heads:
                raise ValueError(
                    f"{self.name}: num_heads[{s}] = {heads} must divide the stage's width {self.stage_dim(s)}."
                )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"{self.name}: drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if not self.tiles():
            raise ValueError(
                f"image size: {self.resolution} does not tile {self.name} (patch {self.patch_size}, window "
                f"{self.window_size}, {len(self.depths)} stages): the token grid of every stage must halve exactly "
                f"and be a multiple of the window or at most the window; use a size such as "
                f"{self.example_resolution()}, e.g. model_kwargs={{'resolution': {self.example_resolution()}}} to "
                f"resize the inputs."
            )

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    def grids(self, resolution: int | None = None) -> list[int]:
        """Token grid side of each stage (0-based), e.g. Swin-Tiny at 224: [56, 28, 14, 7]."""
        return [(resolution or self.resolution) // self.patch_size // 2**s for s in range(len(self.depths))]

    def tiles(self, resolution: int | None = None) -> bool:
        """Patches tile the image, every merging halves the grid exactly, windows tile every grid (a grid
        smaller than the window gets a window of its own size, see ``_fit_window``)."""
        r = resolution or self.resolution
        if r % self.patch_size or (r // self.patch_size) % 2 ** (len(self.depths) - 1):
            return False
        return all(g % self.window_size == 0 or g <= self.window_size for g in self.grids(r))

    def example_resolution(self) -> int:
        """The smallest resolution at least ``resolution`` that this patch and window tile: a multiple of
        patch · 2^(stages−1) (every merging halves the grid); at the latest the multiple whose last grid is
        a multiple of the window."""
        unit = self.patch_size * 2 ** (len(self.depths) - 1)
        r = max(unit, -(-self.resolution // unit) * unit)
        while not self.tiles(r):
            r += unit
        return r

    def hf_config(self, num_classes: int) -> Any:
        from transformers import SwinConfig

        return SwinConfig(
            image_size=self.resolution,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depths=list(self.depths),
            num_heads=list(self.num_heads),
            window_size=self.window_size,
            mlp_ratio=self.mlp_ratio,
            drop_path_rate=self.drop_path_rate,
            num_channels=self.in_channels,
            num_labels=num_classes,
        )

    def arch_fields(self) -> dict[str, tuple[str, Any]]:
        """What a pretrained checkpoint must share with this variant: option → (config field, value)."""
        fields = ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio")
        return {f: (f, getattr(self, f)) for f in fields} | {"in_channels": ("num_channels", self.in_channels)}


SWIN_TINY = dict(resolution=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
# Our choice (docs/methods.md §2.3): Swin-Tiny's widths and depths on 32×32 inputs, patch 2 and window 4, so the
# token grids are 16, 8, 4, 2 (stage 4's window shrinks to its 2×2 grid, as in the original Swin).
SWIN_CIFAR = dict(resolution=32, patch_size=2, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=4)


class SwinBackbone(Backbone):
    """A Swin classifier as units over ``transformers.SwinForImageClassification``'s modules."""

    def __init__(self, spec: SwinSpec, *, num_classes: int = 10, image_size: int | None = None, hf_model=None) -> None:
        super().__init__()
        self.spec = spec
        self.image_size = image_size or spec.resolution
        self.in_channels = spec.in_channels
        if hf_model is None:
            from transformers import SwinForImageClassification

            hf_model = SwinForImageClassification(spec.hf_config(num_classes))  # HF's initialisation
        swin = hf_model.swin
        units: list[nn.Module] = [PatchEmbedUnit(swin.embeddings, spec.resolution)]
        keys: list[Cut] = [(0, 0)]
        for s, (stage, grid) in enumerate(zip(swin.encoder.layers, spec.grids()), start=1):
            for b, block in enumerate(stage.blocks):
                _fit_window(block, grid)
                units.append(BlockUnit(block))
                keys.append((s, b))
            if stage.downsample is not None:
                units.append(MergeUnit(stage.downsample))
                keys.append((s, len(stage.blocks)))
        units.append(TokenClassifier(swin.layernorm, hf_model.classifier))
        keys.append((len(spec.depths) + 1, 0))
        self.units = nn.ModuleList(units)
        self.unit_keys = keys

    def named_splits(self, name: str) -> dict[int, list[Cut]]:
        """``stages`` (and ``paper``): K = 2 after stage 2, K = 4 after stages 1-3 (docs/methods.md §6;
        ``hf_common.stage_splits``)."""
        return stage_splits(self.spec.depths) if name in ("stages", "paper") else {}


def _fit_window(block: nn.Module, grid: int) -> None:
    """Give a block whose window exceeds its token grid a window of the grid's size, without shift.

    The original Swin does this at construction. transformers builds the attention for the configured
    window and clamps only at forward time, so its relative-position table no longer matches the window
    (a shape error in transformers 5). The new table keeps the entries of the offsets that still occur —
    the centre of the larger table — so a pretrained table carries over exactly.
    """
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    attention = block.attention
    old = attention.relative_position_bias
    window = old.window_size[0]
    if grid >= window:
        return
    heads = old.relative_position_bias_table.shape[1]
    new = SwinRelativePositionBias(heads, (grid, grid))
    table = old.relative_position_bias_table.detach().view(2 * window - 1, 2 * window - 1, heads)
    c = window - grid  # offsets −(grid−1)..(grid−1) sit at rows / columns c .. c + 2·grid − 2
    with torch.no_grad():
        new.relative_position_bias_table.copy_(table[c : c + 2 * grid - 1, c : c + 2 * grid - 1].reshape(-1, heads))
    attention.relative_position_bias = new.to(old.relative_position_bias_table.device)
    block.window_size, block.shift_size = grid, 0


# --- factories ----------------------------------------------------------------------------------------------
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(SwinSpec) if f.name not in ("name", "resolution"))


def create_swin(
    name: str,
    defaults: dict[str, Any],
    *,
    num_classes: int = 10,
    image_size: int | None = None,
    resolution: int | None = None,
    pretrained: str | os.PathLike | None = None,
    **overrides: Any,
) -> SwinBackbone:
    """A Swin variant: ``defaults`` ← ``overrides`` (any of ``_SPEC_FIELDS``; ``create_model`` refuses
    others by name); see the module docstring for ``image_size`` and ``resolution``; ``pretrained`` a hub
    name or a ``save_pretrained`` directory."""
    fields = {**defaults, **overrides}
    fields["resolution"] = resolution or image_size or defaults["resolution"]
    spec = SwinSpec(name=name, **fields)
    hf_model = None
    if pretrained:
        from transformers import SwinForImageClassification

        # the resolution and drop path rate asked for replace the checkpoint's own
        hf_model = load_pretrained(
            pretrained, SwinForImageClassification, model=name, family="Swin",
            example="microsoft/swin-tiny-patch4-window7-224 for swin_tiny", wanted=spec.arch_fields(),
            num_classes=num_classes, width=spec.stage_dim(len(spec.depths) - 1),
            check=functools.partial(_absolute_table_fits, spec.resolution),
            image_size=spec.resolution, drop_path_rate=spec.drop_path_rate,
        )
    return keep_config(SwinBackbone(spec, num_classes=num_classes, image_size=image_size, hf_model=hf_model), hf_model)


def _absolute_table_fits(resolution: int, config: Any) -> str | None:
    """A checkpoint's learned absolute position table (``use_absolute_embeddings``, off in Swin's own
    variants) has one row per patch of its own resolution, and is not resized here: refused at another one."""
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if getattr(config, "use_absolute_embeddings", False) and size != resolution:
        return (f"has absolute position embeddings learned at {size}×{size}, which are not resized to "
                f"{resolution}×{resolution}; pass model_kwargs resolution: {size} (inputs of another size are then "
                f"resized to it), or a checkpoint without them")
    return None


_OPTIONS = (*signature_options(create_swin, exclude=("name", "defaults")), *_SPEC_FIELDS)
for _name, _defaults in (("swin_tiny", SWIN_TINY), ("swin_cifar", SWIN_CIFAR)):
    register_model(_name, functools.partial(create_swin, _name, _defaults), family="transformer", options=_OPTIONS)
