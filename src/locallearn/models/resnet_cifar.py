"""CIFAR ResNets of He et al. 2016 (ResNet-20/32/44/56/110), exactly as docs/methods.md §2.1.

Units: the stem, each BasicBlock, the classifier. Keys: (0, 0) for the stem, (s, b) for block b of stage
s = 1..3, (4, 0) for the classifier. ``in_channels`` (default 3) is the stem's input channels, 1 for grayscale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from locallearn.models.base import Backbone
from locallearn.models.registry import register_model, signature_options
from locallearn.validate import Int

WIDTHS = (16, 32, 64)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # Projection shortcut (option B) on the first block of stages 2 and 3.
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Stem(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class PoolClassifier(nn.Module):
    """Global average pool → Linear: the network's own head, the last unit."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # (B, C, H, W) → (B, C) → (B, classes)


class CifarResNet(Backbone):
    def __init__(self, *, depth: int, num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}.")
        Int(1)("in_channels", in_channels)  # 3 for RGB, 1 for grayscale
        n = (depth - 2) // 6
        self.depth, self.blocks_per_stage, self.image_size, self.in_channels = depth, n, image_size, in_channels
        units: list[nn.Module] = [Stem(in_channels, WIDTHS[0])]
        keys = [(0, 0)]
        c_in = WIDTHS[0]
        for stage, width in enumerate(WIDTHS, start=1):
            for block in range(n):
                stride = 2 if stage > 1 and block == 0 else 1
                units.append(BasicBlock(c_in, width, stride=stride))
                keys.append((stage, block))
                c_in = width
        units.append(PoolClassifier(c_in, num_classes))
        keys.append((4, 0))
        self.units = nn.ModuleList(units)
        self.unit_keys = keys
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_fan_out(self)

    def init_auxiliary(self, module: nn.Module) -> None:
        """The reference code initialises every Conv2d of the model the same way — backbone, auxiliary heads,
        image decoders and context encoders (its loop over ``self.modules()``; docs/methods.md §2.4)."""
        he_fan_out(module)


def he_fan_out(module: nn.Module) -> None:
    """Every Conv2d of ``module`` ~ N(0, 2 / (k·k·C_out)) (He et al.'s CIFAR initialisation, fan-out), every
    BatchNorm weight 1 and bias 0; conv biases and nn.Linear keep PyTorch's default (docs/methods.md §2.4)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_OPTIONS = signature_options(CifarResNet, exclude=("depth",))  # the depth is the model's name
for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", lambda *, _d=_depth, **kw: CifarResNet(depth=_d, **kw), options=_OPTIONS)
