"""Tokens and feature maps: what every transformer here shares — Swin's and ViT's units, FeatRecon's token head,
the feature decoders. A (B, C, H, W) map is the layout handed between units (so everything built on feature
maps works on transformers unchanged); a block reads its tokens (B, H·W, C) from it without a copy."""

from __future__ import annotations

import torch
from torch import nn


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C); no copy when ``x`` came from ``to_map`` (channels-last strides)."""
    return x.flatten(2).transpose(1, 2).contiguous()


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H·W, C) → (B, C, H, W), a view."""
    return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


class TokenClassifier(nn.Module):
    """LayerNorm → mean over tokens → Linear, (B, C, H, W) → (B, out): the network's own head (the last
    unit, over transformers' modules) and, built fresh (``create``), FeatRecon's token head, which also
    reads tokens (B, L, D) as they are (a model of one's own)."""

    def __init__(self, norm: nn.LayerNorm, fc: nn.Linear) -> None:
        super().__init__()
        self.norm, self.fc = norm, fc

    @classmethod
    def create(cls, channels: int, out_dim: int) -> TokenClassifier:
        return cls(nn.LayerNorm(channels), nn.Linear(channels, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = to_tokens(x) if x.dim() == 4 else x
        return self.fc(self.norm(tokens).mean(dim=1))  # (B, N, C) → (B, C) → (B, out)
