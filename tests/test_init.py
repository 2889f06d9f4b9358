"""Initialisation as the reference code (docs/methods.md §2.4): on the CIFAR ResNets, every Conv2d of the model
— backbone, auxiliary heads, image decoders, context encoders — is drawn from N(0, 2/(k·k·C_out)), every
BatchNorm starts at γ = 1, β = 0, and Linear layers keep PyTorch's default. Backbones of other families keep
their own initialisation for what local learning adds."""

import math

import pytest
import torch
from torch import nn

import locallearn as ll


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def expected_std(conv: nn.Conv2d) -> float:
    return math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))


@pytest.mark.parametrize("method, options", [
    ("infopro", dict(num_modules=4)),  # 1c2f heads and image decoders
    ("contsup", dict(num_modules=4, context="R1E", reconstruct=True)),  # and the context encoders
    ("dgl", dict(num_modules=4)),
])
def test_heads_decoders_and_encoders_are_initialised_as_the_backbone(method, options):
    torch.manual_seed(0)
    net = ll.build("resnet110", method=method, dataset="cifar10", **options)
    parts = [*net.objectives[:-1]] + ([net.context] if net.context is not None else [])
    checked = 0
    for part in [net.backbone, *parts]:
        for conv in convs(part):
            w = conv.weight.detach()
            if w.numel() < 2000:  # too few draws to estimate a standard deviation
                continue
            assert abs(float(w.mean())) < 4 * expected_std(conv) / math.sqrt(w.numel())
            assert float(w.std()) == pytest.approx(expected_std(conv), rel=0.1), conv
            checked += 1
        for bn in (m for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert checked > 10
    # Linear layers keep PyTorch's default: U(-1/√fan_in, 1/√fan_in)
    for linear in (m for p in parts for m in p.modules() if isinstance(m, nn.Linear)):
        assert float(linear.weight.detach().abs().max()) <= 1 / math.sqrt(linear.in_features) + 1e-6


def test_the_rule_is_the_reference_formula_for_each_kind_of_part():
    """One large sample per kind: the 1c2f head's conv, the image decoder's convs, the encoders' convs."""
    torch.manual_seed(1)
    net = ll.build("resnet32", method="contsup", num_modules=16, context="R1E", reconstruct=True, dataset="cifar10")
    kinds = {
        "head": [c for o in net.objectives[:-1] for c in convs(o.head)],
        "image decoder": [c for o in net.objectives[:-1] for c in convs(o.image_decoder)],
        "image encoder": [c for e in net.context.image_encoders.values() for c in convs(e)],
        "residual encoder": [c for e in net.context.res_encoders.values() for c in convs(e)],
    }
    for kind, found in kinds.items():
        z = torch.cat([(c.weight.detach() / expected_std(c)).flatten() for c in found])  # ~ N(0, 1) if right
        assert float(z.std()) == pytest.approx(1.0, rel=0.05), kind
        assert abs(float(z.mean())) < 0.05, kind


def test_transformer_backbones_keep_their_own_initialisation():
    torch.manual_seed(2)
    tiny = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=2, drop_path_rate=0.0)
    net = ll.build("swin_cifar", method="infopro", num_modules=2, split="stages", image_size=32, model_kwargs=tiny)
    decoder_conv = net.objectives[0].image_decoder.net[0]
    bound = 1 / math.sqrt(decoder_conv.in_channels * 9)  # PyTorch's default: kaiming_uniform(a=√5)
    assert float(decoder_conv.weight.detach().abs().max()) <= bound + 1e-6
