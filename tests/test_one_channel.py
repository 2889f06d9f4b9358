"""Grayscale inputs (Fashion-MNIST's 1×28×28) through every method: the channel count comes from the data,
so the stem, ContSup's encoders and InfoPro's reconstruction take one channel — nothing is broadcast to
three. One training step each, and gradient isolation module by module."""

import pytest
import torch

import locallearn as ll

from checks import assert_gradient_isolation

METHODS = [
    ("e2e", {}),
    ("checkpoint", {}),
    ("greedy", dict(num_modules=4)),
    ("dgl", dict(num_modules=4)),
    ("infopro", dict(num_modules=4)),
    ("contsup", dict(num_modules=4, context="R1E")),
    ("contsup", dict(num_modules=8, context="R2E", reconstruct=True)),
    ("featrecon", dict(num_modules=3, split="uniform")),
]


def batch(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("method, options", METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_every_method_trains_on_one_channel_images(method, options):
    net = ll.build("resnet20", method=method, dataset="fashion_mnist", split=options.pop("split", "uniform"), **options)
    assert net.config.in_channels == 1 and net.backbone.in_channels == 1
    assert net.backbone.units[0][0].weight.shape[1] == 1  # the stem reads one channel
    for objective in net.objectives[:-1]:
        if objective.image_decoder is not None:  # reconstructs the grayscale image itself
            assert objective.image_decoder.net[3].out_channels == 1 and objective.image_mean.shape == (1, 1, 1, 1)
    if net.context is not None:
        for encoder in net.context.image_encoders.values():
            assert encoder.net[0].in_channels == 1
    x, y = batch()
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("method, options", METHODS[2:], ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS[2:])])
def test_each_module_loss_reaches_only_its_own_parts_on_one_channel(method, options):
    net = ll.build("resnet20", method=method, dataset="fashion_mnist", split=options.pop("split", "uniform"), **options)
    x, y = batch()
    assert_gradient_isolation(net, x, y)


def test_channels_must_agree_with_the_data():
    with pytest.raises(ValueError, match="in_channels: dataset fashion_mnist has 1-channel images, got in_channels=3"):
        ll.build("resnet20", method="e2e", dataset="fashion_mnist", in_channels=3)
    with pytest.raises(ValueError, match="in_channels is an option of its own"):
        ll.build("resnet20", method="e2e", model_kwargs={"in_channels": 1})
    # so are the classes and the image size: a second value in model_kwargs built another network than the one
    # config.yaml records (its classifier, or a ViT's position table)
    for name, value in (("num_classes", 5), ("image_size", 64)):
        with pytest.raises(ValueError, match=rf"^model_kwargs: {name} is an option of its own \({name}=\.\.\., or "
                                             rf"the dataset's\), not a backbone argument; pass it as {name}\.$"):
            ll.build("vit_tiny" if name == "image_size" else "resnet20", method="e2e", model_kwargs={name: value})
    # the run's own value given again (runs of earlier releases, which allowed it) builds the same network
    assert ll.build("resnet20", method="e2e", model_kwargs={"num_classes": 10}).config.num_classes == 10
    with pytest.raises(ValueError, match="image_mean: expected one finite number"):
        ll.build("resnet20", method="e2e", in_channels=1, image_mean=(0.5, 0.5, 0.5))
