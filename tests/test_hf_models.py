"""Backbones built from transformers beyond Swin — ImageNet ResNets (resnet18, resnet50), ViT (vit_tiny/small/base,
token mean without CLS token) and ConvNeXt (convnext_tiny): published configurations, unit layout, parity with
transformers' own forward, K = 1 parity with plain training, local methods and gradient isolation, pretrained
checkpoints, 1-channel inputs (also through the CIFAR ResNets and Swin), bad options."""

import copy
import time

import pytest
import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn.models import create_model, model_family

from checks import assert_gradient_isolation, hub_unreachable

# Tiny configurations on 32×32 inputs. ResNet: stem 8×8 (stride 4), stages 8, 4, 2, 1; 2 blocks in stage 1 so an
# identity-shortcut block runs too. ViT: patch 4, an 8×8 token grid, 4 layers (K = 4 stage split). ConvNeXt:
# grids 8, 4, 2, 1, no drop path (deterministic steps).
TINY = {
    "resnet18": dict(embedding_size=8, hidden_sizes=(8, 16, 16, 16), depths=(2, 1, 1, 1)),
    "resnet50": dict(embedding_size=8, hidden_sizes=(8, 16, 16, 16), depths=(2, 1, 1, 1)),
    "vit_tiny": dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, patch_size=4),
    "convnext_tiny": dict(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 16, 16), drop_path_rate=0.0),
}
MODELS = list(TINY)


def batch(n=4, size=32, classes=10, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def tiny_net(model, method="e2e", **options):
    options.setdefault("image_size", 32)
    return ll.build(model, method=method, model_kwargs=dict(TINY[model]), **options)


def hf_class(model):
    import transformers

    prefix = {"resnet": "ResNet", "vit": "ViT", "convnext": "ConvNext"}[model.split("_")[0].rstrip("0123456789")]
    return getattr(transformers, f"{prefix}ForImageClassification")


def hf_config(model, **fields):
    """transformers' config of ``model`` with ``fields`` (our option names; in_channels → num_channels)."""
    fields = {("num_channels" if k == "in_channels" else k): list(v) if isinstance(v, tuple) else v
              for k, v in fields.items()}
    if model.startswith("resnet"):
        fields["layer_type"] = "basic" if model == "resnet18" else "bottleneck"
    return hf_class(model).config_class(**fields)


# --- published configurations ----------------------------------------------------------------------------
# Parameters with 1000 classes: transformers' *ForImageClassification of the published config (ViT: less the
# CLS token and its position embedding, 2 × hidden), and the same with 10 classes.
PUBLISHED = {
    "resnet18": (11_689_512, 11_181_642, dict(layer_type="basic", embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                              depths=[2, 2, 2, 2])),
    "resnet50": (25_557_032, 23_528_522, dict(layer_type="bottleneck", embedding_size=64,
                                              hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3])),
    "vit_tiny": (5_717_416 - 2 * 192, 5_525_962, dict(hidden_size=192, num_attention_heads=3, intermediate_size=768)),
    "vit_small": (22_050_664 - 2 * 384, 21_668_746,
                  dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536)),
    "vit_base": (86_567_656 - 2 * 768, 85_804_810,
                 dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
    "convnext_tiny": (28_589_128, 27_827_818, dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3])),
}
LAYOUT = {  # number of units, stages split, unit_shapes at 224: first unit, last feature map
    "resnet18": (10, {4: [(1, 1), (2, 1), (3, 1)], 2: [(2, 1)]}, (64, 56, 56), (512, 7, 7)),
    "resnet50": (18, {4: [(1, 2), (2, 3), (3, 5)], 2: [(2, 3)]}, (64, 56, 56), (2048, 7, 7)),
    "vit_small": (14, {2: [(1, 5)], 3: [(1, 3), (1, 7)], 4: [(1, 2), (1, 5), (1, 8)],
                       6: [(1, 1), (1, 3), (1, 5), (1, 7), (1, 9)], 12: [(1, b) for b in range(11)]},
                  (384, 14, 14), (384, 14, 14)),
    "convnext_tiny": (23, {4: [(1, 2), (2, 2), (3, 8)], 2: [(2, 2)]}, (96, 56, 56), (768, 7, 7)),
}


@pytest.mark.parametrize("model", list(PUBLISHED))
def test_full_size_models_are_the_published_configurations(model):
    """Built on the meta device (no memory, no initialisation): structure and counts only."""
    import transformers

    count_1000, count_10, fields = PUBLISHED[model]
    with torch.device("meta"):
        ours = create_model(model, num_classes=1000)
        theirs = hf_class(model)(hf_config(model, num_labels=1000, **{
            k: v for k, v in fields.items() if k != "layer_type"}))
        ours_10 = create_model(model, num_classes=10)
    config = theirs.config
    for field, value in fields.items():  # our architecture is the published one
        assert getattr(ours.spec, field) == (tuple(value) if isinstance(value, list) else value), field
    if model.startswith("vit"):
        assert (config.patch_size, config.num_hidden_layers, config.image_size) == (16, 12, 224)
        assert isinstance(theirs, transformers.ViTForImageClassification)
    n_theirs = sum(p.numel() for p in theirs.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == count_1000 == n_theirs - (2 * config.hidden_size if model.startswith("vit") else 0)
    assert sum(p.numel() for p in ours_10.parameters()) == count_10
    if model in LAYOUT:
        units, stages, first, last = LAYOUT[model]
        assert ours.num_units == units and ours.named_splits("stages") == stages
        with torch.device("meta"):
            shapes = ours.unit_shapes(224)
        assert shapes[0] == first and shapes[-2] == last and shapes[-1] == (1000,)
    assert model_family(model) == ("transformer" if model.startswith("vit") else "cnn")


# --- unit layout ---------------------------------------------------------------------------------------------
def test_resnet_units_keys_and_shapes():
    net = create_model("resnet18", image_size=32, **TINY["resnet18"])
    assert net.unit_keys == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0), (4, 0), (5, 0)]
    assert net.unit_shapes() == [(8, 8, 8), (8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 2, 2), (16, 1, 1), (10,)]
    bottleneck = create_model("resnet50", image_size=32, **TINY["resnet50"])
    assert type(bottleneck.units[1]).__name__ == "ResNetBottleNeckLayer"
    assert bottleneck.named_splits("stages") == {4: [(1, 1), (2, 0), (3, 0)], 2: [(2, 0)]}


def test_vit_units_keys_and_shapes():
    net = create_model("vit_tiny", image_size=32, **TINY["vit_tiny"])
    assert net.unit_keys == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]
    assert net.unit_shapes() == [(16, 8, 8)] * 5 + [(10,)]
    assert net.units[0].position_embeddings.shape == (1, 64, 16)  # patch positions only
    assert not any("cls_token" in name for name, _ in net.named_parameters())
    assert net.named_splits("stages") == {2: [(1, 1)], 4: [(1, 0), (1, 1), (1, 2)]}


def test_convnext_units_keys_and_shapes():
    net = create_model("convnext_tiny", image_size=32, **TINY["convnext_tiny"])
    # stem, block (1, 0), downsampling (1, 1), block (2, 0), downsampling (2, 1), ...
    assert net.unit_keys == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (5, 0)]
    assert net.unit_shapes() == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4), (16, 2, 2), (16, 2, 2), (16, 1, 1),
                                 (16, 1, 1), (10,)]
    assert net.named_splits("stages") == {4: [(1, 0), (2, 0), (3, 0)], 2: [(2, 0)]}


@pytest.mark.parametrize("model", MODELS)
def test_stage_splits_and_no_paper_split(model):
    assert tiny_net(model, "greedy", num_modules=2, split="stages").cuts == create_model(
        model, **TINY[model]).named_splits("stages")[2]
    with pytest.raises(ValueError, match=rf"^split: {model} defines no paper split; its splits are .*stages"):
        tiny_net(model, "greedy", num_modules=2, split="paper")


# --- parity with transformers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny *ForImageClassification with 5 classes per family, written by save_pretrained."""
    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("hf")
    paths = {}
    for model in MODELS:
        extra = dict(image_size=32) if model.startswith("vit") else {}
        hf = hf_class(model)(hf_config(model, num_labels=5, **extra, **TINY[model]))
        with torch.no_grad():  # BatchNorm statistics and layer scales that are not the initial ones
            for name, buf in hf.named_buffers():
                if "running" in name:
                    buf.uniform_(0.5, 1.5)
            for name, p in hf.named_parameters():
                if "layer_scale" in name:
                    p.uniform_(0.5, 1.5)
        paths[model] = root / model
        hf.save_pretrained(paths[model])
    return paths


def reference(model, path):
    return hf_class(model).from_pretrained(path).eval()


def reference_logits(model, hf, x):
    """transformers' own forward. ViT: ViTModel's forward with the CLS token masked out as a key, so the patch
    tokens never see it and equal ours; then the token mean of the patch tokens through the classifier."""
    if not model.startswith("vit"):
        return hf(x).logits
    mask = torch.ones(x.shape[0], 1 + hf.vit.embeddings.patch_embeddings.num_patches, dtype=torch.long)
    mask[:, 0] = 0
    tokens = hf.vit(x, attention_mask=mask).last_hidden_state[:, 1:]  # (B, N, C) after the final LayerNorm
    return hf.classifier(tokens.mean(dim=1))


@pytest.mark.parametrize("model", MODELS)
def test_units_in_order_are_transformers_forward(model, checkpoints):
    hf = reference(model, checkpoints[model])
    net = create_model(model, num_classes=5, image_size=32, pretrained=checkpoints[model], **TINY[model]).eval()
    x, _ = batch()
    out = x
    with torch.no_grad():
        for unit in net.units:
            out = unit(out)
        assert torch.allclose(out, reference_logits(model, hf, x), atol=1e-5)
        assert torch.equal(net(x), out)


@pytest.mark.parametrize("model", MODELS)
def test_k1_training_step_is_plain_training(model):
    torch.manual_seed(3)
    net = tiny_net(model, "e2e", num_classes=10)
    plain = copy.deepcopy(net.backbone)
    x, y = batch()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    stats = ll.train_step(net, x, y, opt)
    opt_plain.zero_grad()
    loss = F.cross_entropy(plain(x), y)
    loss.backward()
    opt_plain.step()
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for (name, a), b in zip(net.backbone.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


# --- local methods ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "method, options",
    [("contsup", dict(num_modules=4, split="stages", context="R1E")), ("infopro", dict(num_modules=2, split="stages"))],
)
def test_local_methods_train_and_each_module_loss_reaches_only_its_own_parts(model, method, options):
    net = tiny_net(model, method, dataset="cifar10", **options)
    x, y = batch()
    assert_gradient_isolation(net, x, y)
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values()) and len(stats) > net.num_modules
    assert net.config.aux_head == ("token" if model.startswith("vit") else "1c2f")
    net.eval()
    assert net(x).shape == (4, 10)


# --- 1-channel inputs ---------------------------------------------------------------------------------------
def test_one_channel_cifar_resnet_with_context():
    net = ll.build("resnet32", method="contsup", num_modules=4, context="R1E", image_size=32,
                   in_channels=1)
    assert net.backbone.in_channels == 1 and net.backbone.units[0][0].weight.shape == (16, 1, 3, 3)
    assert net.context.image_encoders["0"].net[0].in_channels == 1
    x, y = batch(channels=1)
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())
    three = create_model("resnet32")  # the default is unchanged: docs/methods.md §2.1's count
    assert three.in_channels == 3 and sum(p.numel() for p in three.parameters()) == 466_906


@pytest.mark.parametrize("model", ["vit_tiny", "resnet18", "swin_cifar"])
def test_one_channel_hf_models_at_k1(model):
    swin = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), drop_path_rate=0.0)
    kwargs = swin if model == "swin_cifar" else dict(TINY[model])
    net = ll.build(model, method="e2e", image_size=32, in_channels=1, model_kwargs=kwargs)
    assert net.backbone.in_channels == 1
    x, y = batch(channels=1)
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert torch.isfinite(stats["loss"])
    assert net.backbone.unit_shapes()[-1] == (10,)


@pytest.mark.parametrize("model", MODELS)
def test_one_channel_hf_models_with_infopro_reconstruct_one_channel(model):
    from locallearn.decoders import ImageDecoder

    net = tiny_net(model, "infopro", num_modules=2, split="stages", in_channels=1, image_mean=(0.29,), image_std=(0.35,))
    decoders = [m for m in net.modules() if isinstance(m, ImageDecoder)]
    assert decoders and all(d.net[-2].out_channels == 1 for d in decoders)  # the grayscale image, not 3 copies
    x, y = batch(channels=1)
    assert_gradient_isolation(net, x, y)
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values()) and "rec/0" in stats


# --- pretrained checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_pretrained_with_other_classes_gets_a_fresh_classifier(model, checkpoints):
    hf = reference(model, checkpoints[model])
    net = create_model(model, num_classes=10, image_size=32, pretrained=checkpoints[model], **TINY[model])
    fc = net.units[-1].classifier[1] if model.startswith("resnet") else net.units[-1].fc
    assert fc.out_features == 10
    ours = [p for p in net.parameters() if all(p is not q for q in fc.parameters())]
    theirs = [p for name, p in hf.named_parameters() if not name.startswith("classifier") and "cls_token" not in name
              and "position_embeddings" not in name]
    assert len(ours) == len(theirs) + (1 if model.startswith("vit") else 0)  # ViT: + its patch positions
    assert all(any(p.shape == q.shape and torch.equal(p, q) for q in ours) for p in theirs)


def test_pretrained_vit_drops_the_cls_token_and_resizes_positions(checkpoints, tmp_path):
    from transformers import ViTModel

    hf = reference("vit_tiny", checkpoints["vit_tiny"])
    table = hf.vit.embeddings.position_embeddings  # (1, 1 + 64, C), CLS first
    net = create_model("vit_tiny", num_classes=5, image_size=32, pretrained=checkpoints["vit_tiny"], **TINY["vit_tiny"])
    assert torch.equal(net.units[0].position_embeddings, table[:, 1:])
    # at 64×64 the 8×8 table becomes 16×16, as transformers' own interpolation at each forward would
    big = create_model("vit_tiny", num_classes=5, image_size=64, pretrained=checkpoints["vit_tiny"], **TINY["vit_tiny"])
    emb = torch.zeros(1, 1 + 256, 16)
    theirs = hf.vit.embeddings.interpolate_pos_encoding(emb, 64, 64)[:, 1:]
    assert torch.allclose(big.units[0].position_embeddings, theirs)
    assert big(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"ViT input is 32×32 but its position table is for 64×64 images"):
        big(torch.randn(2, 3, 32, 32))
    # a bare ViTModel (with its pooler) loads too; its classifier is new
    hf.vit.save_pretrained(tmp_path / "bare")
    assert isinstance(ViTModel.from_pretrained(tmp_path / "bare"), ViTModel)
    bare = create_model("vit_tiny", num_classes=7, image_size=32, pretrained=tmp_path / "bare", **TINY["vit_tiny"])
    assert bare.units[-1].fc.out_features == 7
    assert torch.equal(bare.units[1].layer.attention.q_proj.weight, hf.vit.layers[0].attention.q_proj.weight)


def test_pretrained_checkpoint_of_another_architecture_is_refused(checkpoints):
    with pytest.raises(ValueError, match=r"^pretrained: .* is another ResNet architecture than resnet50: layer_type "
                                         r"basic \(wanted bottleneck\); pass matching"):
        create_model("resnet50", pretrained=checkpoints["resnet18"], **TINY["resnet50"])
    with pytest.raises(ValueError, match=r"another ConvNeXt architecture than convnext_tiny: hidden_sizes "
                                         r"\(8, 16, 16, 16\) \(wanted \(8, 16, 16, 32\)\), in_channels 3 \(wanted 1\);"):
        create_model("convnext_tiny", pretrained=checkpoints["convnext_tiny"],
                     **dict(TINY["convnext_tiny"], hidden_sizes=(8, 16, 16, 32), in_channels=1))
    with pytest.raises(ValueError, match=r"is a 'vit' checkpoint, not ConvNeXt; give a ConvNeXt checkpoint"):
        create_model("convnext_tiny", pretrained=checkpoints["vit_tiny"], **TINY["convnext_tiny"])
    with pytest.raises(ValueError, match=r"another ViT architecture than vit_small: hidden_size 16 \(wanted 24\)"):
        create_model("vit_small", image_size=32, pretrained=checkpoints["vit_tiny"],
                     **dict(TINY["vit_tiny"], hidden_size=24))


def test_pretrained_fails_fast_and_clearly_without_the_hub(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^pretrained: no such directory"):
        create_model("resnet18", pretrained=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^pretrained: cannot load .*empty': the directory is not a usable"):
        create_model("resnet18", pretrained=tmp_path / "empty")
    name = "locallearn-tests/no-such-model"  # never in any cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"not in the Hugging Face cache, and HF_HUB_OFFLINE is set; give a"):
        create_model("vit_tiny", pretrained=name)
    hub_unreachable(monkeypatch)
    with pytest.raises(ValueError, match=r"not in the Hugging Face cache, and \S+ cannot be reached \(no route"):
        create_model("convnext_tiny", pretrained=name)
    assert time.monotonic() - start < 10  # no download retries


# --- bad options --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        ("resnet18", dict(depth=18), r"^model_kwargs: unknown option 'depth' for resnet18; valid options are num_classes, "
                                     r"image_size, pretrained, embedding_size, hidden_sizes, depths, in_channels\.$"),
        ("resnet18", dict(depths=(2, 2)), r"^resnet18: depths and hidden_sizes need one entry per stage"),
        ("resnet50", dict(hidden_sizes=(8, 16, 16, 18)), r"^resnet50: bottleneck blocks reduce the width by 4"),
        ("resnet18", dict(in_channels=0), r"^resnet18: in_channels must be an integer >= 1, got 0\.$"),
        ("vit_tiny", dict(hidden_size=16, num_attention_heads=3), r"^vit_tiny: num_attention_heads = 3 must divide"),
        ("vit_tiny", dict(image_size=30, patch_size=4), r"^image size: 30 is not a multiple of vit_tiny's patch size"),
        ("vit_base", dict(layer_norm_eps=1e-6), r"^model_kwargs: unknown option 'layer_norm_eps' for vit_base"),
        ("convnext_tiny", dict(image_size=16), r"^image size: 16 is too small for convnext_tiny: patch 4 and 3 "
                                               r"downsamplings need at least 32\.$"),
        ("convnext_tiny", dict(drop_path_rate=1.0), r"^convnext_tiny: drop_path_rate must be in \[0, 1\)"),
        ("convnext_tiny", dict(depths="3339"), r"^convnext_tiny: depths must be a list of positive integers"),
        ("resnet32", dict(in_channels=True), r"^in_channels must be an integer >= 1"),
        ("swin_cifar", dict(in_channels=0), r"^swin_cifar: in_channels must be an integer >= 1"),
    ],
)
def test_bad_model_options_are_refused_in_one_line(model, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        create_model(model, **kwargs)
    assert "\n" not in str(err.value)
