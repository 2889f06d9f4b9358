"""ResNet-50 from Hugging Face transformers (random initialisation from its published configuration, or
--pretrained NAME_OR_DIR) cut into K = 4 modules at its stages, trained with ContSup's R1E context.

    python examples/hf_resnet50_contsup.py [--steps 2] [--image-size 32] [--pretrained microsoft/resnet-50]

On the command line the same network is `locallearn train --model resnet50 --method contsup --num-modules 4
--split stages --context R1E ...`. Here a few steps on digits batches show it trains; on a GPU, use
ImageNet-sized inputs (--image-size 224). At 224 this configuration trains about 4.9× the floating-point
operations of end-to-end training (the default heads and ContSup's full-resolution image encoders are sized
for CIFAR): docs/custom-models.md, "What local learning costs on a wide network".
"""

import argparse

import torch

import locallearn as ll
from locallearn.data import BatchLoader, describe_dataset, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--pretrained", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    kwargs = {"pretrained": args.pretrained} if args.pretrained else {}
    net = ll.build("resnet50", method="contsup", num_modules=4, split="stages", context="R1E",
                   image_size=args.image_size, num_classes=10, model_kwargs=kwargs)
    print(f"resnet50 cut at {net.cuts}: {sum(p.numel() for p in net.parameters()):,} parameters with the heads and encoders")
    spec = describe_dataset("digits", None)
    loader = BatchLoader(*load_split("digits", None, train=True), spec=spec, batch_size=16, train=True, seed=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for step, (images, labels) in zip(range(args.steps), loader):
        if args.image_size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images, size=args.image_size, mode="bilinear")
        stats = ll.train_step(net, images, labels, optimizer)
        print(f"step {step + 1}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in stats.items() if k.startswith("loss")))


if __name__ == "__main__":
    main()
