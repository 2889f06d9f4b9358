"""A backbone of your own: subclass locallearn's Backbone, give it ordered units with keys, and every method
(ContSup's context, InfoPro's reconstruction, DGL's heads, ...) works on it.

    python examples/custom_backbone.py [--steps 5]

A Backbone holds ``units`` (run in order, the last maps features to logits), ``unit_keys`` (how cuts name
the units; here (stage, block) pairs, as the built-in ResNets), ``image_size`` and ``in_channels``, and may
publish its own named splits (``named_splits``), which ``split="paper"`` then uses.
"""

import argparse

import torch
from torch import nn

import locallearn as ll
from locallearn.models import Backbone


class WideNet(Backbone):
    """Three stages of two conv blocks (widths 32, 64, 128), then pooling and a classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        units, keys, c_in = [], [], in_channels
        for stage, width in enumerate((32, 64, 128), start=1):
            for block in range(2):
                stride = 2 if stage > 1 and block == 0 else 1
                units.append(nn.Sequential(nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False),
                                           nn.BatchNorm2d(width), nn.ReLU()))
                keys.append((stage, block))
                c_in = width
        units.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)))
        keys.append((4, 0))
        self.units, self.unit_keys = nn.ModuleList(units), keys
        self.image_size, self.in_channels = image_size, in_channels

    def named_splits(self, name):
        """A "paper" split of its own: one module per stage."""
        return {3: [(1, 1), (2, 1)]} if name == "paper" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for method, options in (("contsup", dict(context="R1E")), ("infopro", {}), ("dgl", {})):
        net = ll.build(WideNet(), method=method, num_modules=3, split="paper", **options)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        first = last = None
        for _ in range(args.steps):
            loss = float(ll.train_step(net, images, labels, optimizer)["loss"])
            first, last = first or loss, loss
        print(f"{method}: cuts {net.cuts}, {sum(p.numel() for p in net.parameters()):,} parameters, "
              f"loss {first:.3f} → {last:.3f} after {args.steps} steps")


if __name__ == "__main__":
    main()
