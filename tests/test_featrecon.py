"""FeatRecon (docs/methods.md §6): the token head, the three feature decoders against their targets, the fused
linear-decoder loss against the plain one, module 0's patch-embedding target, and the method preset."""

import pytest
import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn.memory import SavedTensorMeter
from locallearn.config import resolve_net
from locallearn.decoders import FEATURE_DECODERS, PatchExpand, feature_mse
from locallearn.memory import unit_profile
from locallearn.split.auto import BATCH, objective_cost
from locallearn.heads import create_head
from locallearn.models import create_model
from locallearn.models.tokens import TokenClassifier, to_map

TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2, drop_path_rate=0.0)


def channels_last(b, c, h, w):
    """A (B, C, H, W) map laid out as Swin's units hand it on: a view of (B, H·W, C) tokens."""
    return to_map(torch.randn(b, h * w, c), h, w)


# (module output shape, module input shape): same grid, one merge, two merges, the image behind a patch embedding.
SHAPES = [((16, 8, 8), (16, 8, 8)), ((32, 4, 4), (16, 8, 8)), ((64, 2, 2), (16, 8, 8)), ((16, 8, 8), (3, 32, 32))]


@pytest.mark.parametrize("name", ["linear", "conv", "transformer"])
@pytest.mark.parametrize("out_shape, in_shape", SHAPES)
def test_each_decoder_maps_a_module_output_onto_its_input(name, out_shape, in_shape):
    decoder = FEATURE_DECODERS.get(name)(out_shape, in_shape)
    h = channels_last(2, *out_shape).requires_grad_()
    out = decoder(h)
    assert out.shape == (2, *in_shape)
    loss = feature_mse(decoder, h, torch.randn(2, *in_shape))
    loss.backward()
    assert torch.isfinite(loss) and h.grad is not None and h.grad.abs().sum() > 0


def test_decoders_refuse_grids_no_merging_produces():
    with pytest.raises(ValueError, match=r"cannot expand a 3×3 output back to its 8×8 input"):
        FEATURE_DECODERS.get("linear")((16, 3, 3), (8, 8, 8))


def test_unknown_decoder_name_is_refused():
    with pytest.raises(ValueError, match=r"unknown feature decoder 'mlp'; valid feature decoders: conv, linear, transformer"):
        ll.build("swin_cifar", method="featrecon", num_modules=2, image_size=32, model_kwargs=TINY, feature_decoder="mlp")


def test_linear_decoder_is_a_patch_expanding_linear_and_pixel_shuffle():
    dec = PatchExpand((32, 4, 4), (8, 8, 8))
    assert dec.proj.in_features == 32 and dec.proj.out_features == 4 * 8
    h = channels_last(1, 32, 4, 4)
    out = dec(h)
    # Output pixel (2y + i, 2x + j) is the (i, j) group of C_in channels of the Linear at token (y, x).
    lin = dec.proj(h.permute(0, 2, 3, 1)).view(1, 4, 4, 2, 2, 8)
    assert torch.allclose(out[0, :, 2 * 1 + 1, 2 * 3 + 0], lin[0, 1, 3, 1, 0])


@pytest.mark.parametrize("out_shape, in_shape", SHAPES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_fused_linear_loss_equals_the_plain_mse(out_shape, in_shape, layout):
    dec = PatchExpand(out_shape, in_shape)
    h = channels_last(2, *out_shape) if layout == "channels_last" else torch.randn(2, *out_shape)
    h.requires_grad_()
    target = torch.randn(2, *in_shape)
    plain = F.mse_loss(dec(h), target)
    fused = dec.mse(h, target)
    params = [h, dec.proj.weight, dec.proj.bias]
    for a, b in zip(torch.autograd.grad(plain, params), torch.autograd.grad(fused, params)):
        assert torch.allclose(a, b, atol=1e-6)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)


def test_fused_linear_loss_gradcheck():
    dec = PatchExpand((8, 2, 2), (4, 4, 4)).double()
    target = torch.randn(2, 4, 4, 4, dtype=torch.double)
    h = torch.randn(2, 8, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: dec.mse(h, target), (h,))


def test_fused_linear_loss_keeps_no_prediction_for_backward():
    dec = PatchExpand((32, 8, 8), (16, 16, 16))
    h, target = channels_last(2, 32, 8, 8).requires_grad_(), torch.randn(2, 16, 16, 16)
    peaks = []
    for loss_fn in (lambda: F.mse_loss(dec(h), target), lambda: dec.mse(h, target)):
        with SavedTensorMeter([*dec.parameters(), h, target]) as meter:
            loss_fn().backward()
        peaks.append(meter.peak_bytes)
    assert peaks[0] >= target.numel() * 4 and peaks[1] == 0


def test_token_head_is_layernorm_token_mean_linear():
    head = create_head("token", (32, 4, 4), 10)
    assert isinstance(head, TokenClassifier)  # the class of Swin's own classifier unit
    x = channels_last(3, 32, 4, 4)
    expected = head.fc(F.layer_norm(x.flatten(2).transpose(1, 2), (32,), head.norm.weight, head.norm.bias).mean(1))
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert sum(p.numel() for p in head.parameters()) == 2 * 32 + 32 * 10 + 10


def test_featrecon_preset_picks_the_head_of_the_backbone_family():
    swin = ll.build("swin_cifar", method="featrecon", num_modules=2, image_size=32, model_kwargs=TINY)
    assert (swin.config.aux_head, swin.config.local_loss, swin.config.feature_decoder) == ("token", "ce", "linear")
    assert swin.config.to_dict()["aux_head"] == "token"
    resnet = ll.build("resnet20", method="featrecon", num_modules=3, split="uniform", dataset="cifar10")
    assert resnet.config.aux_head == "1c2f"
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    stats = ll.train_step(resnet, x, y, torch.optim.SGD(resnet.parameters(), lr=0.01))
    assert {"feat/0", "feat/1", "task/0"} <= set(stats)


def test_module_0_reconstructs_the_patch_embedding_of_its_own_forward():
    net = ll.build("swin_cifar", method="featrecon", num_modules=2, split="stages", image_size=32, model_kwargs=TINY)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    state = net.begin(x, y)
    h = net.module_forward(0, x, state)
    with torch.no_grad():
        embedding = net.backbone.units[0](x)
    assert torch.equal(state.taps[0], embedding) and not state.taps[0].requires_grad
    _, metrics = net.local_loss(0, h, x, state)
    assert 0 not in state.taps  # consumed: not kept alive past module 0
    decoder = net.objectives[0].feature_decoder
    assert metrics["feat"].item() == pytest.approx(feature_mse(decoder, h, embedding).item(), rel=1e-6)
    assert decoder(h).shape == embedding.shape


def test_feature_weight_scales_the_reconstruction_term():
    nets = [
        ll.build("swin_cifar", method="featrecon", num_modules=2, image_size=32, model_kwargs=TINY, feature_weight=w)
        for w in (1.0, 0.0)
    ]
    nets[1].load_state_dict(nets[0].state_dict())
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    s1, s0 = (ll.train_step(n, x, y, torch.optim.SGD(n.parameters(), lr=0.0)) for n in nets)
    assert s0["loss/0"] == pytest.approx(s0["task/0"]) and s1["loss/0"] == pytest.approx(s1["task/0"] + s1["feat/0"])


def test_balanced_split_charges_the_decoder_to_the_module_it_ends():
    backbone = create_model("swin_cifar", **TINY)
    image = torch.zeros(BATCH, 3, 32, 32)
    saves, outputs = unit_profile(backbone, image)
    kept = [s.input_bytes > 0 for s in saves]

    def decoder_cost(name, keeps_input=kept):
        """What the feature decoder adds to the objective's cost (the token head alone subtracted)."""
        costs = [
            objective_cost(resolve_net("swin_cifar", "featrecon", num_modules=2, image_size=32, model_kwargs=TINY,
                                       feature_decoder=decoder), image, outputs,
                           saves_output=[s.saves_output for s in saves], keeps_input=keeps_input)
            for decoder in (name, None)
        ]
        return lambda i, j: costs[0](i, j) - costs[1](i, j)

    cost = decoder_cost("transformer")
    # A decoder back to the 16×16 grid (one Swin block there) costs more than one back to 8×8.
    assert cost(1, 2) > cost(4, 5) > 0
    # The target is the module's input, which the step holds (the cost model's start cost): not charged
    # again, even where the module opens with a patch merging, which does not keep its input.
    linear = decoder_cost("linear")
    assert linear(1, 2) == 0 and linear(3, 5) == 0
    # Module 0's target, the patch embedding, is charged only where unit 1 does not keep it.
    assert kept[1] and linear(0, 2) == 0
    unkept = decoder_cost("linear", [kept[0], False, *kept[2:]])
    assert unkept(0, 2) == outputs[0].numel() * 4 / BATCH
