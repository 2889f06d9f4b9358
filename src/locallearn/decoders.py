"""Decoders of the reconstruction objectives.

``ImageDecoder`` is InfoPro's (and ContSup's ``h_reconstruct``, METHODS.md 4): it reconstructs the
un-normalised input image from a module's output. FeatRecon's feature decoders (METHODS.md 6) live in
``FEATURE_DECODERS``, registered by ``locallearn.featrecon``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.registry import Registry


class ImageDecoder(nn.Module):
    """Bilinear upsample to S×S (align_corners=True) → conv3x3(C → 12) → BN → ReLU → conv3x3(12 → 3) → sigmoid."""

    def __init__(self, channels: int, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.Conv2d(12, 3, kernel_size=3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)
        return self.net(h)  # (B, 3, S, S) in (0, 1)


# name → factory(out_shape, in_shape) → module mapping a module's output back to its input features.
FeatureDecoderFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]
FEATURE_DECODERS: Registry[FeatureDecoderFactory] = Registry("feature decoder")


def feature_mse(decoder: nn.Module, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FeatRecon's reconstruction loss MSE(decoder(h), target), in float32. A decoder may compute it itself
    (a ``mse(h, target)`` method) to keep less for backward; the value is the same."""
    if hasattr(decoder, "mse"):
        return decoder.mse(h, target)
    return F.mse_loss(decoder(h).float(), target.float())
