"""Optimizers and schedules: SGD as the papers' recipe, AdamW without weight decay on biases, norms and
position tables; warm-up and cosine per epoch or per step; the pipeline's merged optimizer state with several
parameter groups."""

import math

import pytest
import torch
from torch import nn

import locallearn as ll
from locallearn.cli import main
from locallearn.training import RunDir, resolve
from locallearn.training.runner import make_optimizer
from locallearn.training.schedule import Schedule, cosine_lr, epoch_lr


def test_adamw_does_not_decay_biases_norms_and_position_tables():
    config = resolve(optimizer="adamw", model="swin_cifar", method="e2e", image_size=32,
                     model_kwargs=dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2))
    assert (config.optim.momentum, config.optim.nesterov, config.optim.weight_decay) == (None, None, 0.05)
    net = ll.build_net(config.net)
    optimizer = make_optimizer(net, config.optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    assert any(names[id(p)].endswith("relative_position_bias_table") for p in no_decay["params"])
    assert any(names[id(p)].endswith("layernorm.weight") or "norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_sgd_is_the_papers_recipe_and_options_must_fit_the_optimizer():
    sgd = resolve().optim
    assert (sgd.optimizer, sgd.momentum, sgd.nesterov, sgd.weight_decay) == ("sgd", 0.9, True, 1e-4)
    net = ll.build("resnet20", method="e2e")
    optimizer = make_optimizer(net, sgd)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["nesterov"]
    with pytest.raises(ValueError, match="momentum and nesterov apply to --optimizer sgd, not adamw"):
        resolve(optimizer="adamw", momentum=0.9)
    with pytest.raises(ValueError, match="optimizer: unknown optimizer 'lamb'; valid optimizers are sgd, adamw"):
        resolve(optimizer="lamb")


def test_per_step_schedule_is_the_epoch_formula_over_steps():
    s = Schedule(lr=0.1, epochs=20, warmup_epochs=5, warmup_lr=0.01, per_step=True, steps_per_epoch=10)
    for e in range(1, 21):
        assert s.at(e, 0) == pytest.approx(epoch_lr(e, lr=0.1, epochs=20, warmup_epochs=5, warmup_lr=0.01))
    total = 200
    for t in (0, 3, 49, 50, 51, 120, 199):
        c = 0.05 * (1 + math.cos(math.pi * t / total))
        expected = c * t / 50 + 0.01 * (50 - t) / 50 if t < 50 else c
        assert s.at(t // 10 + 1, t % 10) == pytest.approx(expected)
    assert s.at(20, 9) > 0 and cosine_lr(0, 10, lr=1.0) == 1.0
    flat = Schedule(lr=0.1, epochs=20, warmup_epochs=5, per_step=False, steps_per_epoch=10)
    assert flat.at(3, 0) == flat.at(3, 9) == flat.epoch(3)


def test_a_run_with_adamw_stepped_per_step(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "64",
            "--limit-test", "32", "--batch-size", "16", "--device", "cpu", "--epochs", "2", "--optimizer", "adamw",
            "--lr", "0.001", "--schedule", "step", "--warmup-epochs", "1", "--out", str(out)]
    assert main(args) == 0
    assert "above the peak" not in capsys.readouterr().out  # AdamW's warm-up starts at 1e-6
    state = RunDir(out).load_checkpoint()
    assert (state["config"]["optim"]["warmup_lr"], state["config"]["optim"]["lr"]) == (1e-6, 0.001)
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.05, 0.0]
    last = state["optimizer"]["param_groups"][0]["lr"]  # the rate of the last step: the cosine's, per step
    assert last == pytest.approx(Schedule(lr=0.001, epochs=2, warmup_epochs=1, per_step=True, steps_per_epoch=4).at(2, 3))
    assert last < state["history"][-1]["lr"]  # below the rate the last epoch started at


def test_merged_optimizer_state_with_two_groups_round_trips():
    """The pipeline writes one optimizer state as a single process would (``distributed.runner``)."""
    from locallearn.distributed.runner import _global_indices, _merge_optimizer_states, _split_optimizer_state, full_groups

    config = resolve(optimizer="adamw", model="resnet20", num_modules=4, split="uniform", lr=0.01)
    torch.manual_seed(0)
    net = ll.build_net(config.net)
    single = make_optimizer(net, config.optim)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    ll.train_step(net, x, y, single)
    groups = full_groups(net, config.optim)
    stages = [range(0, 2), range(2, 4)]
    optimizers = [make_optimizer(nn.ModuleList([p for k in r for p in net.module_parts(k)]), config.optim) for r in stages]
    parts = []
    for optimizer in optimizers:
        optimizer.load_state_dict(_split_optimizer_state(single.state_dict(), groups, optimizer))
        parts.append((_global_indices(groups, optimizer), optimizer.state_dict()))
    merged = _merge_optimizer_states(parts, groups)
    reference = single.state_dict()
    assert merged["param_groups"] == reference["param_groups"]
    assert merged["state"].keys() == reference["state"].keys()
    for i, value in reference["state"].items():
        assert all(torch.equal(merged["state"][i][k], v) for k, v in value.items() if torch.is_tensor(v))


def test_each_optimizer_has_its_own_default_rates_and_a_warm_up_above_the_peak_is_said(tmp_path, capsys):
    assert (resolve(optimizer="adamw").optim.lr, resolve(optimizer="adamw").optim.warmup_lr) == (1e-3, 1e-6)
    assert (resolve().optim.lr, resolve().optim.warmup_lr) == (0.1, 0.01)  # SGD: the papers' recipe
    assert resolve(optimizer="adamw", lr=3e-4).optim.lr == 3e-4
    # SGD's default warm-up rate, 0.01, above a peak of 0.001: accepted (as it always was), and said
    args = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "32",
            "--limit-test", "16", "--batch-size", "16", "--device", "cpu", "--epochs", "2", "--lr", "0.001",
            "--warmup-epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "warm-up: from 0.01, above the peak lr 0.001, down to it" in capsys.readouterr().out


def test_another_optimizer_over_a_preset_takes_its_own_rates_and_settings():
    """--optimizer naming another optimizer than the file's replaces the file's optimizer options (an SGD
    preset's momentum was refused under AdamW; a ViT preset kept AdamW's lr and weight decay under SGD)."""
    from locallearn.training import load_config

    adamw = load_config("baselines/resnet32_cifar10_k4_greedy", optimizer="adamw").optim
    assert (adamw.lr, adamw.warmup_lr, adamw.weight_decay, adamw.momentum, adamw.nesterov) == (1e-3, 1e-6, 0.05, None, None)
    assert (adamw.epochs, adamw.batch_size) == (160, 1024)  # the rest of the recipe stays the file's
    sgd = load_config("vit/vit_small_cifar10_e2e", optimizer="sgd", lr=0.05).optim
    assert (sgd.lr, sgd.warmup_lr, sgd.weight_decay, sgd.momentum, sgd.nesterov) == (0.05, 0.01, 1e-4, 0.9, True)
    assert sgd.schedule == "step"  # not an optimizer option
    assert load_config("vit/vit_small_cifar10_e2e", optimizer="adamw").optim.lr == 1.25e-4  # the same: kept
