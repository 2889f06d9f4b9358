"""Auxiliary networks that turn a local module's output into a local prediction (docs/methods.md §3).

Each factory takes the module's output shape — a feature map ``(C, H, W)``, or tokens ``(L, D)`` from a
model of one's own — and the output size (number of classes for cross-entropy, 128 for the contrastive
loss) and returns an ``nn.Module``. ``linear`` and ``token`` read either; the convolutional heads (``1c2f``,
``4c1f``, ``dgl``) need a feature map and refuse tokens in one line. Heads are training-only: the inference
forward never runs them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.models.tokens import TokenClassifier
from locallearn.registry import Registry

HeadFactory = Callable[[tuple[int, ...], int], nn.Module]
HEADS: Registry[HeadFactory] = Registry("auxiliary head")


def create_head(name: str, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return HEADS.get(name)(in_shape, out_dim)


def width(in_shape: tuple[int, ...]) -> int:
    """The features per position: C of a map (C, H, W), D of tokens (L, D)."""
    return in_shape[0] if len(in_shape) == 3 else in_shape[-1]


def feature_map(in_shape: tuple[int, ...], head: str) -> tuple[int, int, int]:
    """``in_shape`` as (C, H, W), or a one-line refusal naming the heads that read tokens."""
    if len(in_shape) != 3:
        raise ValueError(
            f"aux_head: {head} is convolutional and needs a feature map (C, H, W) at every cut, but a cut gives "
            f"{tuple(in_shape)}; use aux_head 'token' (LayerNorm → token mean → Linear) or 'linear'"
            + (" (or set family = 'transformer' on the model or its factory, and the presets' 'auto' picks the token "
               "head)." if head == "1c2f" else ".")
        )
    return tuple(in_shape)  # type: ignore[return-value]


class GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x.mean(dim=1)  # (B, C, H, W) → (B, C); (B, L, D) → (B, D)


@HEADS.register("linear")
def linear_head(in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """Greedy supervised learning's head ("0c1f"): global average pool (the mean over tokens) → Linear."""
    return nn.Sequential(GlobalPool(), nn.Linear(width(in_shape), out_dim))


# (C', stride) of 1c2f's convolution by input width C (InfoPro / ContSup).
_ONE_CONV_WIDTH = {16: (32, 2), 32: (64, 2), 64: (64, 1)}


@HEADS.register("1c2f")
def one_conv_two_fc_head(in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """InfoPro's "1c2f": conv3x3(C → C', stride s) → BN → ReLU → pool → Linear(C' → 128) → ReLU → Linear.

    (C', s) = (32, 2), (64, 2), (64, 1) for C = 16, 32, 64; other widths (our choice) keep C' = C and
    stride 1 when C ≥ 64, else double the width at stride 2, which extends the same pattern.
    """
    c = feature_map(in_shape, "1c2f")[0]
    c_mid, stride = _ONE_CONV_WIDTH.get(c, (c, 1) if c >= 64 else (2 * c, 2))
    return nn.Sequential(
        nn.Conv2d(c, c_mid, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_mid),
        nn.ReLU(inplace=True),
        GlobalPool(),
        nn.Linear(c_mid, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, out_dim),
    )


@HEADS.register("4c1f")
def imagenet_head(in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """InfoPro's auxiliary classifier for ImageNet-class networks (the authors' ImageNet code), "4c1f":
    conv1x1(C → 128) → BN → ReLU → conv3x3(128 → 256, stride 2) → BN → ReLU → conv3x3(256 → 512, stride 2)
    → BN → ReLU → conv1x1(512 → 2048) → BN → ReLU → pool → Linear(2048 → out), convolutions without bias.

    The 1×1 reduction first keeps it cheap on wide, high-resolution outputs, where ``1c2f`` is not: on
    ResNet-50's (256, 56, 56) stage output it is 0.77 G multiply-adds per image against 1c2f's 1.85 G.
    """
    widths = [(feature_map(in_shape, "4c1f")[0], 128, 1, 1), (128, 256, 3, 2), (256, 512, 3, 2), (512, 2048, 1, 1)]
    layers: list[nn.Module] = []
    for c_in, c_out, k, stride in widths:
        layers += [nn.Conv2d(c_in, c_out, kernel_size=k, stride=stride, padding=k // 2, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, GlobalPool(), nn.Linear(2048, out_dim))


class DGLHead(nn.Module):
    """The auxiliary network of DGL (Belilovsky, Eickenberg, Oyallon, ICML 2020).

    As in their CIFAR experiments: adaptive-average-pool the input to ⌈H/4⌉×⌈W/4⌉, then ``num_convs``
    1×1 convolutions C → C (no bias) each with BN and ReLU, adaptive-average-pool to 2×2, flatten to 4C,
    then an MLP of ``mlp_layers`` × [Linear(4C → 4C) → BN1d → ReLU] and a final Linear(4C → out).
    We use 3 convolutions and 3 MLP layers, the configuration of DGL's CIFAR auxiliary problems.
    """

    def __init__(self, in_shape: tuple[int, ...], out_dim: int, *, num_convs: int = 3, mlp_layers: int = 3):
        super().__init__()
        c, h, w = feature_map(in_shape, "dgl")
        self.pool_size = (math.ceil(h / 4), math.ceil(w / 4))
        self.convs = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(c, c, kernel_size=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
                for _ in range(num_convs)
            ]
        )
        width = 4 * c
        mlp: list[nn.Module] = []
        for _ in range(mlp_layers):
            mlp += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*mlp, nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(F.adaptive_avg_pool2d(x, self.pool_size))
        x = F.adaptive_avg_pool2d(x, (2, 2)).flatten(1)  # (B, C, 2, 2) → (B, 4C)
        return self.mlp(x)


HEADS.register("dgl", lambda in_shape, out_dim: DGLHead(in_shape, out_dim))

# FeatRecon's classification head (docs/methods.md §6): Swin's own classifier (LayerNorm → token mean → Linear),
# built fresh; the head ``aux_head="auto"`` picks on transformers. On tokens (L, D) it normalises D.
HEADS.register("token", lambda in_shape, out_dim: TokenClassifier.create(width(in_shape), out_dim))
