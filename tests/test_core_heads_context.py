"""Auxiliary heads, decoders and ContSup encoders against docs/methods.md §3-5: sizes, shapes, gradients."""

import pytest
import torch

import locallearn as ll
from locallearn.context import ContextMode
from locallearn.decoders import ImageDecoder
from locallearn.heads import create_head


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "shape, expected",
    [
        # conv3x3(C→C') + BN(C') + Linear(C'→128) + Linear(128→10)
        ((16, 32, 32), 16 * 32 * 9 + 2 * 32 + 32 * 128 + 128 + 128 * 10 + 10),
        ((32, 16, 16), 32 * 64 * 9 + 2 * 64 + 64 * 128 + 128 + 128 * 10 + 10),
        ((64, 8, 8), 64 * 64 * 9 + 2 * 64 + 64 * 128 + 128 + 128 * 10 + 10),
    ],
)
def test_1c2f_head_size(shape, expected):
    head = create_head("1c2f", shape, 10)
    assert n_params(head) == expected
    assert head(torch.randn(2, *shape)).shape == (2, 10)


def test_1c2f_strides():
    assert create_head("1c2f", (16, 32, 32), 10)[0].stride == (2, 2)
    assert create_head("1c2f", (64, 8, 8), 10)[0].stride == (1, 1)


def test_linear_and_dgl_heads():
    assert n_params(create_head("linear", (32, 16, 16), 10)) == 32 * 10 + 10
    dgl = create_head("dgl", (16, 32, 32), 10)
    assert dgl.pool_size == (8, 8)
    # 3 × [conv1x1 16→16 + BN] and 3 × [Linear 64→64 + BN1d] + Linear 64→10
    assert n_params(dgl) == 3 * (256 + 32) + 3 * (64 * 64 + 64 + 128) + 64 * 10 + 10
    assert dgl(torch.randn(3, 16, 32, 32)).shape == (3, 10)


def test_4c1f_head_is_infopros_imagenet_classifier():
    head = create_head("4c1f", (256, 56, 56), 10)
    convs = [m for m in head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (256, 128, 1, 1), (128, 256, 3, 2), (256, 512, 3, 2), (512, 2048, 1, 1)]
    assert all(c.bias is None for c in convs)
    bn = 2 * (128 + 256 + 512 + 2048)
    assert n_params(head) == 256 * 128 + 128 * 256 * 9 + 256 * 512 * 9 + 512 * 2048 + bn + 2048 * 10 + 10
    assert head(torch.randn(2, 256, 56, 56)).shape == (2, 10)
    assert create_head("4c1f", (8, 1, 1), 128)(torch.randn(2, 8, 1, 1)).shape == (2, 128)  # any size, contrast width
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as count:  # the docstring's figure against 1c2f's on that map
        head(torch.randn(1, 256, 56, 56))
    with FlopCounterMode(display=False) as wide:
        create_head("1c2f", (256, 56, 56), 10)(torch.randn(1, 256, 56, 56))
    assert count.get_total_flops() / 2 == pytest.approx(0.77e9, rel=0.01)
    assert wide.get_total_flops() / 2 == pytest.approx(1.85e9, rel=0.01)


def test_4c1f_trains_a_wide_backbone_with_every_local_method():
    for method in ("greedy", "infopro", "contsup"):
        net = ll.build("resnet18", method=method, num_modules=2, split="stages", image_size=32, aux_head="4c1f",
                       model_kwargs=dict(hidden_sizes=[8, 16, 16, 16], embedding_size=8), num_classes=3)
        assert net.config.aux_head == "4c1f"
        metrics = ll.train_step(net, torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,)),
                                torch.optim.SGD(net.parameters(), lr=0.01))
        assert torch.isfinite(metrics["loss"])


def test_contrast_heads_are_128_wide():
    net = ll.build("resnet32", method="infopro", num_modules=4, dataset="cifar10")
    assert all(o.head[-1].out_features == 128 for o in net.objectives[:-1])


def test_image_decoder_shape_and_size():
    dec = ImageDecoder(32, 32, image_channels=3)
    out = dec(torch.randn(2, 32, 16, 16))
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert n_params(dec) == (32 * 12 * 9 + 12) + 24 + (12 * 3 * 9 + 3)


def test_contsup_k16_r0_true_model_size():
    net = ll.build("resnet32", method="contsup", num_modules=16, context="R0", local_loss="ce",
                   reconstruct=False, split="paper", num_classes=10, dataset="cifar10")
    assert n_params(net) == 855_280


def enc_params(c_out, c_in=3):
    return (c_in * 12 * 9 + 12) + 24 + (12 * c_out * 9 + c_out) + 2 * c_out


def resenc_params(c_out, c_in):
    return c_in * c_out + c_out + 2 * c_out


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("R0", 0),
        # K=4 paper cuts (1,2) (2,1) (3,0): boundary widths 16, 32, 64
        ("E", enc_params(16) + enc_params(32) + enc_params(64)),
        ("R1", resenc_params(16, 3) + resenc_params(32, 16) + resenc_params(64, 32)),
        ("R1E", enc_params(16) + enc_params(32) + enc_params(64) + resenc_params(32, 16) + resenc_params(64, 32)),
        (
            "R2",
            resenc_params(16, 3)
            + resenc_params(32, 16) + resenc_params(32, 3)
            + resenc_params(64, 32) + resenc_params(64, 16),
        ),
    ],
)
def test_only_the_encoders_a_mode_uses_are_built(mode, extra):
    base = n_params(ll.build("resnet32", method="contsup", num_modules=4, context="R0", dataset="cifar10"))
    net = ll.build("resnet32", method="contsup", num_modules=4, context=mode, dataset="cifar10")
    assert n_params(net) - base == extra


def test_context_sources():
    assert ContextMode.parse("R1").sources(0) == [-1]
    assert ContextMode.parse("R1E").sources(0) == []
    assert ContextMode.parse("R1E").sources(2) == [1]
    assert ContextMode.parse("R4").sources(2) == [1, 0, -1]
    assert ContextMode.parse("R2E").sources(3) == [2, 1]
    assert ContextMode.parse("E").sources(5) == []


@pytest.mark.parametrize(
    "mode, K", [("R0", 4), ("E", 4), ("R1", 4), ("R1E", 4), ("R2", 4), ("R4", 8), ("R8", 16), ("R16", 16), ("R2E", 8)]
)
def test_every_mode_shapes_and_encoder_gradients(mode, K):
    net = ll.build("resnet32", method="contsup", num_modules=K, context=mode, dataset="cifar10")
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    state = net.begin(x)
    inp = x
    for k in range(K - 1):
        h = net.module_forward(k, inp)
        inp = net.handoff(k, h, state)
        assert inp.shape == h.shape == (2, *net.boundary_shapes[k])
        assert len(state.history) <= max(ContextMode.parse(mode).depth, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    ll.train_step(net, x, y, opt)
    if net.context is not None:
        encoders = list(net.context.image_encoders.values()) + list(net.context.res_encoders.values())
        assert encoders
        for enc in encoders:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_context_is_applied_at_test_time():
    net = ll.build("resnet20", method="contsup", num_modules=3, split="uniform", context="E", dataset="cifar10").eval()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    with torch.no_grad():
        for enc in net.context.image_encoders.values():
            enc.net[3].bias.add_(1.0)
    assert not torch.allclose(before, net(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context="R3X"), "valid modes are R0, E, R1"),
        (dict(context="R0E"), "valid modes"),
        (dict(context="R8", num_modules=4), "allows at most R4"),
        (dict(context="R01"), "valid modes"),
        (dict(context="E", num_modules=1, method="greedy"), "needs num_modules ≥ 2"),
    ],
)
def test_bad_context_modes(kwargs, message):
    kwargs = {"method": "contsup", "num_modules": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        ll.build("resnet32", **kwargs)
