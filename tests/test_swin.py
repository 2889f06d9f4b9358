"""Swin as units over transformers' modules (docs/methods.md §2.3): the published configuration, unit layout,
splits, K = 1 parity with plain `transformers`, pretrained loading, every method on Swin, bad input."""

import time

import pytest
import torch
import torch.nn.functional as F
import yaml

import locallearn as ll
from locallearn.config import resolve_net
from locallearn.memory import SavedTensorMeter
from locallearn.models import create_model

from checks import assert_gradient_isolation, hub_unreachable

# A tiny Swin on 32×32 inputs (patch 2): grids 16, 8, 4, 2 with window 2, two blocks per stage, so both
# window and shifted-window blocks run; 13 units.
TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2, drop_path_rate=0.0)


def tiny_net(method="featrecon", **options):
    options.setdefault("image_size", 32)
    return ll.build("swin_cifar", method=method, model_kwargs=dict(TINY), **options)


def batch(n=4, size=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_swin_tiny_is_the_published_configuration():
    net = create_model("swin_tiny", num_classes=10)
    spec = net.spec
    assert (spec.patch_size, spec.embed_dim, spec.window_size, spec.resolution) == (4, 96, 7, 224)
    assert spec.depths == (2, 2, 6, 2) and spec.num_heads == (3, 6, 12, 24)
    assert sum(p.numel() for p in net.parameters()) == 27_527_044  # "about 27.5 M"
    assert net.num_units == 1 + 12 + 3 + 1  # patch embedding, blocks, mergings, classifier
    shapes = net.unit_shapes(224)
    assert shapes[0] == (96, 56, 56) and shapes[3] == (192, 28, 28)
    assert shapes[6] == (384, 14, 14) and shapes[13] == (768, 7, 7) and shapes[-1] == (10,)
    assert net.named_splits("stages") == {2: [(2, 1)], 4: [(1, 1), (2, 1), (3, 5)]}


def test_unit_keys_name_embedding_blocks_mergings_and_classifier():
    net = create_model("swin_cifar", **TINY)
    assert net.unit_keys == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2),
                             (4, 0), (4, 1), (5, 0)]
    shapes = net.unit_shapes(32)
    assert shapes[0] == (8, 16, 16) and shapes[3] == (16, 8, 8) and shapes[9] == (64, 2, 2) and shapes[-1] == (10,)


def test_small_input_variant_shrinks_the_last_window_to_its_grid():
    net = create_model("swin_cifar", embed_dim=8, num_heads=(1, 1, 1, 1))  # patch 2, window 4: grids 16, 8, 4, 2
    assert net.spec.grids() == [16, 8, 4, 2]
    last_block = net.units[-2].block
    assert last_block.window_size == 2 and last_block.shift_size == 0
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_inputs_are_resized_to_the_resolution():
    net = create_model("swin_cifar", image_size=96, resolution=32, **TINY)  # STL-10 images on the 32×32 variant
    assert net.image_size == 96 and net.unit_shapes()[0] == (8, 16, 16)
    assert net(torch.randn(2, 3, 96, 96)).shape == (2, 10)


# --- splits --------------------------------------------------------------------------------------------------
def test_stage_splits_cut_after_a_stage_s_last_block():
    assert tiny_net(num_modules=2, split="stages").cuts == [(2, 1)]
    assert tiny_net(num_modules=4, split="stages").cuts == [(1, 1), (2, 1), (3, 1)]
    assert tiny_net(num_modules=4, split="paper").cuts == [(1, 1), (2, 1), (3, 1)]  # the paper's natural cuts
    with pytest.raises(ValueError, match=r"stages split of swin_cifar is defined for num_modules in \[2, 4\]"):
        tiny_net(num_modules=3, split="stages")


@pytest.mark.parametrize("split", ["balanced", "uniform", [[1, 0], [2, 2], [4, 0]]])
def test_computed_and_explicit_splits(split):
    net = tiny_net(num_modules=4, split=split)
    assert net.num_modules == 4
    if isinstance(split, list):
        assert net.cuts == [tuple(c) for c in split]
    x, y = batch()
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())


# --- K = 1 parity with plain transformers, and pretrained weights --------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A tiny SwinForImageClassification (5 classes) written by save_pretrained, random position tables."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(1)
    config = SwinConfig(image_size=32, patch_size=2, num_labels=5, **{**TINY, "depths": [2, 2, 2, 2],
                                                                      "num_heads": [1, 2, 2, 4]})
    model = SwinForImageClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_()
    path = tmp_path_factory.mktemp("swin") / "tiny"
    model.save_pretrained(path)
    return path


def reference(path):
    from transformers import SwinForImageClassification

    return SwinForImageClassification.from_pretrained(path).train()


def test_k1_training_step_matches_plain_transformers(checkpoint_dir):
    ref = reference(checkpoint_dir)
    net = ll.build("swin_cifar", method="e2e", num_classes=5, image_size=32,
                   model_kwargs=dict(TINY, pretrained=str(checkpoint_dir)))
    x, y = batch(classes=5)
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.0))
    loss = F.cross_entropy(ref(x).logits, y)
    loss.backward()
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    ours, theirs = list(net.backbone.parameters()), list(ref.parameters())
    assert len(ours) == len(theirs)  # same parameters, same order: units follow transformers' modules
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and torch.allclose(a.grad, b.grad, atol=1e-6)
    net.eval(), ref.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x).logits, atol=1e-6)


def test_pretrained_weights_load_and_the_classifier_is_replaced(checkpoint_dir):
    ref = reference(checkpoint_dir)
    net = create_model("swin_cifar", num_classes=10, pretrained=checkpoint_dir, **TINY)
    assert net.units[-1].fc.out_features == 10
    loaded = dict(net.named_parameters())
    for name, p in ref.named_parameters():
        if name.startswith("swin.embeddings."):
            assert torch.equal(loaded["units.0.embeddings." + name.removeprefix("swin.embeddings.")], p), name
    assert torch.equal(net.units[1].block.attention.q_proj.weight, ref.swin.encoder.layers[0].blocks[0].attention.q_proj.weight)


def test_build_takes_pretrained_as_train_does(checkpoint_dir):
    net = ll.build("swin_cifar", method="featrecon", num_modules=2, num_classes=5, image_size=32,
                   model_kwargs=dict(TINY), pretrained=checkpoint_dir)
    assert net.config.model_kwargs == {**TINY, "pretrained": str(checkpoint_dir)}
    ref = reference(checkpoint_dir)
    assert torch.equal(net.backbone.units[1].block.attention.q_proj.weight,
                       ref.swin.encoder.layers[0].blocks[0].attention.q_proj.weight)
    with pytest.raises(ValueError, match=r"^model_kwargs: unknown option 'pretrained' for resnet32"):
        ll.build("resnet32", pretrained=checkpoint_dir)


def test_a_checkpoint_saved_in_bfloat16_loads_in_float32_and_trains(checkpoint_dir, tmp_path):
    reference(checkpoint_dir).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    net = ll.build("swin_cifar", method="featrecon", num_modules=2, num_classes=5, image_size=32,
                   model_kwargs=dict(TINY), pretrained=tmp_path / "bf16")
    assert {p.dtype for p in net.parameters()} == {torch.float32}  # it mixed bf16 and float32: a dtype traceback
    x, y = batch(classes=5)
    assert torch.isfinite(ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))["loss"])


def test_pretrained_table_is_cropped_where_the_window_shrinks(checkpoint_dir, tmp_path):
    """A window-4 checkpoint on the 32×32 variant: stage 4 (grid 2) keeps the centre 3×3 of the 7×7 table."""
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                        window_size=4, num_labels=10)
    model = SwinForImageClassification(config)
    table = torch.arange(49.0).view(49, 1)
    with torch.no_grad():
        model.swin.encoder.layers[3].blocks[0].attention.relative_position_bias.relative_position_bias_table.copy_(table)
    model.save_pretrained(tmp_path / "w4")
    net = create_model("swin_cifar", pretrained=tmp_path / "w4", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    cropped = net.units[-2].block.attention.relative_position_bias.relative_position_bias_table
    assert cropped.flatten().tolist() == [16, 17, 18, 23, 24, 25, 30, 31, 32]  # offsets −1..1 of the 7×7 table
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_pretrained_checkpoint_of_another_architecture_is_refused(checkpoint_dir, tmp_path):
    with pytest.raises(ValueError, match=r"another Swin architecture than swin_cifar: embed_dim 8 \(wanted 16\)"):
        create_model("swin_cifar", pretrained=checkpoint_dir, **{**TINY, "embed_dim": 16})
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"is a 'vit' checkpoint, not Swin"):
        create_model("swin_cifar", pretrained=tmp_path / "vit", **TINY)
    with pytest.raises(ValueError, match=r"pretrained: no such directory"):
        create_model("swin_cifar", pretrained=str(tmp_path / "missing"), **TINY)
    # the MLP width is architecture too (it was passed over the checkpoint's: a size-mismatch traceback)
    with pytest.raises(ValueError, match=r"another Swin architecture than swin_cifar: mlp_ratio 4\.0 \(wanted 2\.0\)"):
        create_model("swin_cifar", pretrained=checkpoint_dir, **{**TINY, "mlp_ratio": 2.0})


def test_a_learned_absolute_position_table_loads_at_its_own_resolution_and_is_refused_at_another(tmp_path):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(2)
    config = SwinConfig(image_size=32, patch_size=2, num_labels=10, use_absolute_embeddings=True,
                        **{**TINY, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]})
    SwinForImageClassification(config).save_pretrained(tmp_path / "abs")
    ref = SwinForImageClassification.from_pretrained(tmp_path / "abs").eval()
    net = create_model("swin_cifar", pretrained=tmp_path / "abs", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(pixel_values=x).logits, atol=1e-6)
    with pytest.raises(ValueError, match=r"has absolute position embeddings learned at 32×32, which are not resized to "
                                         r"64×64; pass model_kwargs resolution: 32"):
        create_model("swin_cifar", pretrained=tmp_path / "abs", image_size=64, **TINY)
    assert create_model("swin_cifar", pretrained=tmp_path / "abs", image_size=64, resolution=32, **TINY)(
        torch.randn(1, 3, 64, 64)).shape == (1, 10)  # resized to the table's resolution


def test_pretrained_fails_fast_in_one_line_without_the_hub(tmp_path, monkeypatch):
    """A hub name missing from the cache: one line at once, offline or unreachable, no download retries."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^pretrained: cannot load .*empty': the directory is not a usable"):
        create_model("swin_cifar", pretrained=tmp_path / "empty", **TINY)
    name = "locallearn-tests/no-such-swin"  # never in any cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^pretrained: cannot load 'locallearn-tests/no-such-swin': not a local "
                                         r"directory, not in the Hugging Face cache, and HF_HUB_OFFLINE is set") as err:
        create_model("swin_tiny", pretrained=name)
    assert "\n" not in str(err.value)
    hub_unreachable(monkeypatch)
    with pytest.raises(ValueError, match=r"not in the Hugging Face cache, and \S+ cannot be reached \(no route") as err:
        create_model("swin_cifar", pretrained=name, **TINY)
    assert "\n" not in str(err.value)
    assert time.monotonic() - start < 10


# --- methods on Swin -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, options",
    [
        ("e2e", {}),
        ("checkpoint", {}),
        ("greedy", dict(num_modules=4, split="stages")),
        ("infopro", dict(num_modules=2, split="stages", dataset="cifar10")),
        ("contsup", dict(num_modules=4, split="stages", context="R1E")),
        ("contsup", dict(num_modules=4, split="stages", context="R2")),
        ("contsup", dict(num_modules=2, split="stages", context="E", feature_decoder="conv")),
    ],
)
def test_every_method_trains_and_infers_on_swin(method, options):
    net = tiny_net(method, **options)
    x, y = batch()
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())
    net.eval()
    assert net(x).shape == (4, 10)


def test_infopro_on_swin_uses_the_token_head():
    net = tiny_net("infopro", num_modules=2, split="stages", dataset="cifar10")
    assert net.config.aux_head == "token"
    assert ll.build("resnet20", method="infopro", num_modules=2, split="uniform", dataset="cifar10").config.aux_head == "1c2f"


def test_infopro_on_a_transformer_is_infopro_transformer():
    """The method's defaults depend on the model family (``Method.family_defaults``): cross-entropy and
    λ = (1, 1, 1, 1) on Swin, the contrastive loss and docs/methods.md §4's λ tables on ResNets (resolved in the
    config); options still override them."""
    from locallearn.config import resolve_net

    for model in ("swin_tiny", "swin_cifar"):
        cfg = resolve_net(model, "infopro", dataset="cifar10")
        assert (cfg.aux_head, cfg.local_loss, cfg.reconstruct, cfg.lambdas) == ("token", "ce", True, (1.0, 1.0, 1.0, 1.0))
    cfg = resolve_net("resnet32", "infopro", dataset="cifar10")
    assert (cfg.aux_head, cfg.local_loss, cfg.lambdas) == ("1c2f", "contrast", (6.0, 0.0, 1.0, 2.0))  # K = 4's table
    assert cfg.lambda_source == "table: resnet32 / cifar10 K=4"
    assert resolve_net("swin_tiny", "infopro", dataset="cifar10", local_loss="contrast").local_loss == "contrast"
    net = tiny_net("infopro", num_modules=2, split="stages", dataset="cifar10")
    assert net.lambda_source == "config" and net.lambda_schedule == [(1.0, 1.0)]


def test_activation_checkpointing_matches_end_to_end_on_swin():
    torch.manual_seed(2)
    e2e, ckpt = tiny_net("e2e"), tiny_net("checkpoint")
    ckpt.load_state_dict(e2e.state_dict())
    x, y = batch()
    for net in (e2e, ckpt):
        ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.0))
    for (name, a), b in zip(e2e.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@pytest.mark.parametrize(
    "options",
    [
        dict(method="featrecon", num_modules=4, split="stages", feature_decoder="transformer"),
        dict(method="featrecon", num_modules=3, split="balanced", context="R1E"),
        dict(method="infopro", num_modules=4, split="stages", dataset="cifar10"),
    ],
)
def test_each_module_loss_reaches_only_its_own_parts(options):
    net = tiny_net(**options)
    x, y = batch()
    assert_gradient_isolation(net, x, y)


def test_peak_saved_bytes_fall_with_k():
    x, y = batch()
    peaks = []
    for K in (1, 2, 4):
        net = tiny_net("e2e") if K == 1 else tiny_net(num_modules=K, split="stages")
        with SavedTensorMeter(net.parameters()) as meter:
            ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.0))
        peaks.append(meter.peak_bytes)
    assert peaks[0] > peaks[1] > peaks[2], peaks


# --- bad input -----------------------------------------------------------------------------------------------
def test_image_size_the_patches_and_windows_cannot_tile_is_refused():
    with pytest.raises(ValueError, match=r"image size: 32 does not tile swin_tiny \(patch 4, window 7.*resolution': 224"):
        ll.build("swin_tiny", method="featrecon", num_modules=2, dataset="cifar10")
    with pytest.raises(ValueError, match=r"image size: 30 does not tile swin_cifar.*use a size such as 32,"):
        create_model("swin_cifar", image_size=30)  # the next size up that tiles, not the smallest at all
    with pytest.raises(ValueError, match=r"image size: 40 does not tile swin_cifar.*use a size such as 64,"):
        create_model("swin_cifar", image_size=40)  # 48 halves to grids 24, 12, 6, 3, and 6 is neither ≤ 4 nor 4's multiple
    assert create_model("swin_cifar", image_size=64).spec.grids() == [32, 16, 8, 4]


def test_more_modules_than_units_is_refused():
    with pytest.raises(ValueError, match=r"num_modules=14 is larger than the backbone's 13 units"):
        tiny_net(num_modules=14, split="uniform")


def test_unknown_model_option_is_refused():
    with pytest.raises(ValueError, match=r"unknown option 'depth' for swin_cifar; valid options are"):
        create_model("swin_cifar", depth=4)


# --- learning --------------------------------------------------------------------------------------------------
def test_featrecon_on_the_small_swin_learns_the_bundled_digits():
    """Two epochs of FeatRecon (K = 2, stage split) on the 32×32 variant, cut down, on the CPU."""
    from locallearn.data import BatchLoader, get_spec, load_split

    torch.manual_seed(0)
    spec = get_spec("digits")
    train, test = load_split("digits", None, train=True), load_split("digits", None, train=False)
    small = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), patch_size=4, drop_path_rate=0.0)
    net = ll.build("swin_cifar", method="featrecon", num_modules=2, split="stages", dataset="digits", model_kwargs=small)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
    loader = BatchLoader(*train, spec=spec, batch_size=64, train=True, seed=0, prefetch=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, y in loader:
            ll.train_step(net, x, y, opt)
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in BatchLoader(*test, spec=spec, batch_size=360, train=False, seed=0, prefetch=0):
            correct += (net(x).argmax(dim=1) == y).sum().item()
    assert correct / len(test[1]) > 0.6  # chance: 0.1


def test_a_pretrained_swin_gets_the_computed_split_at_a_k_its_stages_do_not_give(checkpoint_dir):
    """The default split falls back to auto at K = 3 with pretrained weights too (reading the stage cuts built
    the backbone on the meta device, which from_pretrained refuses: it fell back to paper, then refused K = 3)."""
    kwargs = dict(TINY, pretrained=str(checkpoint_dir))
    assert resolve_net("swin_cifar", "infopro", num_modules=3, model_kwargs=kwargs).split == "auto"
    assert resolve_net("swin_cifar", "infopro", num_modules=2, model_kwargs=kwargs).split == "paper"


def test_a_run_from_a_checkpoint_evaluates_and_resumes_after_the_checkpoint_has_moved(checkpoint_dir, tmp_path, capsys):
    """The run records the checkpoint's configuration (pretrained.json): eval, --resume and load_net build that
    architecture and load the run's own weights, without the checkpoint."""
    import json
    import shutil

    from checks import ctrl_c_before_checkpoint
    from locallearn.cli import main
    from locallearn.training import RunDir, load_net

    source = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_dir, source)
    kwargs = "{embed_dim: 8, depths: [2, 2, 2, 2], num_heads: [1, 2, 2, 4], window_size: 2, drop_path_rate: 0.0}"
    args = ["train", "--model", "swin_cifar", "--method", "featrecon", "--num-modules", "2", "--model-kwargs", kwargs,
            "--pretrained", str(source), "--image-size", "32", "--dataset", "digits", "--limit-train", "64",
            "--limit-test", "32", "--batch-size", "16", "--epochs", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    with ctrl_c_before_checkpoint(2):
        assert main([*args, "--out", str(tmp_path / "run")]) == 130
    record = json.loads((tmp_path / "run" / "pretrained.json").read_text())
    recorded = record["config"]
    assert recorded["model_type"] == "swin" and recorded["embed_dim"] == 8
    assert record["run_id"] == yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run_id"]
    # a run of an earlier release has none: its next start records it (the checkpoint is still there)
    (tmp_path / "whole" / "pretrained.json").unlink()
    assert main(["train", "--out", str(tmp_path / "whole"), "--resume"]) == 0  # finished: nothing to train
    assert json.loads((tmp_path / "whole" / "pretrained.json").read_text())["config"] == recorded
    source.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    whole, resumed = (RunDir(tmp_path / name).read_metrics() for name in ("whole", "run"))
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]  # the same run, interrupted or not
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert f"test accuracy {100 * resumed[-1]['test_acc']:.2f}%" in capsys.readouterr().out
    assert load_net(tmp_path / "run").backbone.pretrained_config.embed_dim == 8
    # another run's record is not taken for this run's (it is built from its checkpoint, here gone), nor is a
    # configuration without a run's id
    for foreign in ({**record, "run_id": "another"}, recorded):
        (tmp_path / "run" / "pretrained.json").write_text(json.dumps(foreign))
        assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 2
        assert "pretrained: no such directory" in capsys.readouterr().err
    # a damaged record is named in one line; without a checkpoint the run needs its pretrained source again
    (tmp_path / "run" / "pretrained.json").write_text("{not json")
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "pretrained.json cannot be read" in capsys.readouterr().err
    (tmp_path / "run" / "pretrained.json").write_text(json.dumps(record))
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "summary.json", "metrics.jsonl"):  # as if stopped in epoch 1
        (tmp_path / "run" / name).unlink()
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "pretrained: no such directory" in capsys.readouterr().err
