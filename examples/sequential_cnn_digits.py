"""A plain nn.Sequential CNN, cut into local modules, trained on the bundled digits.

    python examples/sequential_cnn_digits.py [--epochs 3] [--out runs/examples/sequential]

The children of the Sequential are the units; the last maps features to logits. With no published split for
this network, locallearn computes a memory-balanced one (split="auto"). The batches come from any iterable
(here locallearn's own loader of the digits; a torch DataLoader works the same), and the run directory is
the one `locallearn train` writes (config.yaml, metrics.jsonl, checkpoint.pt, summary.json).
"""

import argparse

from torch import nn

from locallearn.data import BatchLoader, describe_dataset, load_split
from locallearn.training import load_net, train


def cnn(channels: int = 3, classes: int = 10) -> nn.Sequential:
    def block(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    return nn.Sequential(
        block(channels, 16, 1), block(16, 32, 2), block(32, 32, 1), block(32, 64, 2),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/examples/sequential")
    args = parser.parse_args()

    spec = describe_dataset("digits", None)  # 3×32×32, 10 classes, its normalisation and augmentation
    loaders = [BatchLoader(*load_split("digits", None, train=train_split), spec=spec, batch_size=64, train=train_split,
                           seed=0) for train_split in (True, False)]
    model = cnn()
    summary = train(model, *loaders, out=args.out, overwrite=True, method="contsup", num_modules=3, context="R1E",
                    num_classes=10, epochs=args.epochs, lr=0.05, device="cpu",
                    image_mean=spec.mean, image_std=spec.std)
    net = load_net(args.out, model=model)  # the trained network, for inference
    print(f"cuts {net.cuts}; final test accuracy {100 * summary['test_acc']:.1f}%")


if __name__ == "__main__":
    main()
