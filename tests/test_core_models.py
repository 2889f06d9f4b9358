"""Backbones against docs/methods.md §2.1: parameter counts, unit layout, feature-map shapes; and every
registered model, whatever its family, trains as local modules (a backbone added to the registry is covered
by that test without an edit, as docs/architecture.md says)."""

import pytest
import torch

from locallearn.models import MODELS, create_model


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name, expected",
    [("resnet32", 466_906), ("resnet110", 1_730_714)],
)
def test_parameter_counts_match_methods(name, expected):
    assert n_params(create_model(name, num_classes=10)) == expected


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_units_and_keys(depth):
    net = create_model(f"resnet{depth}", num_classes=10)
    n = (depth - 2) // 6
    assert net.num_units == 3 * n + 2  # stem + blocks + classifier
    assert net.unit_keys[0] == (0, 0) and net.unit_keys[-1] == (4, 0)
    assert net.unit_keys[1:-1] == [(s, b) for s in (1, 2, 3) for b in range(n)]


@pytest.mark.parametrize("size", [32, 96])
def test_feature_map_shapes(size):
    net = create_model("resnet32", num_classes=10, image_size=size)
    shapes = net.unit_shapes(size)
    assert shapes[0] == (16, size, size)
    assert shapes[5] == (16, size, size)  # last block of stage 1
    assert shapes[6] == (32, size // 2, size // 2)
    assert shapes[11] == (64, size // 4, size // 4)
    assert shapes[-1] == (10,)


def test_unit_shapes_leave_batchnorm_statistics_alone():
    net = create_model("resnet20", num_classes=10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    net.unit_shapes(32)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_initialisation_follows_methods():
    net = create_model("resnet110", num_classes=10)
    conv = net.units[40].conv1  # a stage-3, 64-channel 3×3 conv: std = sqrt(2 / (9·64))
    assert abs(conv.weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.003
    bn = net.units[40].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_forward_equals_running_units():
    net = create_model("resnet20", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    y = x
    for unit in net.units:
        y = unit(y)
    assert torch.equal(net(x), y) and y.shape == (2, 7)


def test_registry_lists_models():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= set(MODELS.names())
    with pytest.raises(ValueError, match="valid models"):
        create_model("resnet33")


@pytest.mark.parametrize(
    "model, model_kwargs, bad",
    [
        ("resnet32", {"foo": 3}, "foo"),
        ("resnet32", {"depth": 3}, "depth"),  # the depth is the model's name, not an option
        ("resnet32", {"pretrained": "microsoft/swin-tiny-patch4-window7-224"}, "pretrained"),  # --pretrained
        ("swin_cifar", {"depth": 4}, "depth"),
    ],
)
def test_unknown_model_kwargs_are_refused_with_the_valid_ones(model, model_kwargs, bad):
    import locallearn as ll

    valid = "num_classes, image_size" if model.startswith("resnet") else "num_classes, image_size, resolution"
    hint = r" \(--pretrained applies to the models built by Hugging Face transformers, such as resnet50\)"
    hint = hint if bad == "pretrained" else ""
    with pytest.raises(ValueError, match=rf"^model_kwargs: unknown option '{bad}' for {model}{hint}; valid options are {valid}"):
        ll.build(model, model_kwargs=model_kwargs)
    with pytest.raises(ValueError, match=rf"^model_kwargs: unknown option '{bad}' for {model}"):
        create_model(model, **model_kwargs)


def test_pretrained_on_a_resnet_is_a_config_error_not_a_traceback():
    from locallearn.training import resolve

    with pytest.raises(ValueError, match=r"^model_kwargs: unknown option 'pretrained' for resnet32 \(--pretrained "
                                         r"applies to the models built by Hugging Face transformers, such as resnet50\); "
                                         r"valid options"):
        resolve(model="resnet32", pretrained="some/checkpoint")


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_trains_as_two_local_modules(name):
    """One step of greedy K = 2 at the model's own input size: finite losses, every parameter trained."""
    import locallearn as ll

    torch.manual_seed(0)
    net = ll.build(name, method="greedy", num_modules=2, split="uniform", num_classes=3)
    size, channels = net.backbone.image_size, net.backbone.in_channels
    x, y = torch.randn(2, channels, size, size), torch.tensor([0, 2])
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert stats and all(torch.isfinite(v) for v in stats.values())
    untrained = [n for n, p in net.named_parameters() if p.grad is None]
    assert not untrained, untrained[:3]
