"""The run config's validation and precedence, the learning-rate schedule against docs/methods.md §7,
checkpoints that load with weights_only, RNG state round trips, and the stop on a non-finite loss."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import yaml

from locallearn.config import NET_FIELDS
from locallearn.training import NonFiniteLossError, RunDir, fit, load_config, lr_schedule, resolve
from locallearn.training import runner
from locallearn.training.config import OPTIONS, dump_yaml, flatten, read_options, resumed_config
from locallearn.training.rundir import rng_state, set_rng_state

from checks import ctrl_c_before_checkpoint

TINY = dict(model="resnet20", num_modules=2, split="uniform", epochs=2, limit_train=64, limit_test=32, batch_size=32)


# --- the learning-rate schedule --------------------------------------------------------------------------
def methods_formula(e: int, E: int, lr: float) -> float:
    """docs/methods.md §7, literally: c(e) = ½·lr·(1 + cos(π·e/E)); warm-up for e ≤ 10."""
    c = 0.5 * lr * (1 + math.cos(math.pi * e / E))
    return c * (e - 1) / 10 + 0.01 * (11 - e) / 10 if e <= 10 else c


@pytest.mark.parametrize("E, lr", [(160, 0.8), (160, 0.1), (400, 0.8), (11, 0.5)])
def test_schedule_is_methods_formula_evaluated_at_the_epoch_start(E, lr):
    schedule = lr_schedule(lr=lr, epochs=E)
    assert len(schedule) == E
    for e in range(1, E + 1):
        c_start = 0.5 * lr * (1 + math.cos(math.pi * (e - 1) / E))  # the documented fix: c(e − 1)
        expected = c_start * (e - 1) / 10 + 0.01 * (11 - e) / 10 if e <= 10 else c_start
        assert schedule[e - 1] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # After the warm-up it is the literal formula one epoch later, so the last epoch is not at lr 0 ...
    for e in range(12, E + 1):
        assert schedule[e - 1] == pytest.approx(methods_formula(e - 1, E, lr), rel=1e-12)
    assert methods_formula(E, E, lr) == pytest.approx(0.0, abs=1e-12)  # the reference defect (docs/methods.md §9)
    assert schedule[-1] == pytest.approx(0.5 * lr * (1 - math.cos(math.pi / E))) and schedule[-1] > 0
    # ... and the warm-up starts at 0.01 and (in the papers' long runs) rises towards the cosine.
    assert schedule[0] == pytest.approx(0.01)
    if E >= 100:
        assert all(a < b for a, b in zip(schedule[:10], schedule[1:11]))


def test_schedule_without_room_for_a_warmup_is_pure_cosine():
    for E in (1, 2, 8, 10):
        schedule = lr_schedule(lr=0.1, epochs=E, warmup_epochs=10)
        assert schedule == pytest.approx([0.05 * (1 + math.cos(math.pi * (e - 1) / E)) for e in range(1, E + 1)])
        assert schedule[0] == pytest.approx(0.1) and min(schedule) > 0
    assert lr_schedule(lr=0.2, epochs=5, warmup_epochs=0)[0] == pytest.approx(0.2)
    three = lr_schedule(lr=1.0, epochs=12, warmup_epochs=3, warmup_lr=0.1)
    assert three[0] == pytest.approx(0.1) and three[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 12)))


# --- the config -------------------------------------------------------------------------------------------
def test_train_config_has_every_network_option():
    assert set(NET_FIELDS) <= set(OPTIONS)


def test_method_defaults_are_resolved_and_flags_win():
    cfg = resolve(method="infopro", num_modules=4, dataset="digits")
    net = cfg.net
    assert (net.local_loss, net.reconstruct, net.context, net.aux_head) == ("contrast", True, "R0", "1c2f")
    assert net.num_classes == 10 and net.image_size == 32 and len(net.image_mean) == 3
    assert resolve(method="infopro", local_loss="ce").net.local_loss == "ce"
    assert resolve(cfg.options()) == cfg  # resolving is idempotent: config.yaml reloads to itself
    assert resolve(flatten(cfg.to_dict(), "config.yaml")) == cfg


def test_default_run_is_resnet32_contsup_on_digits_and_matches_its_preset():
    cfg = load_config()
    assert (cfg.net.model, cfg.net.method, cfg.data.dataset) == ("resnet32", "contsup", "digits")
    assert (cfg.net.num_modules, cfg.net.context) == (4, "R1E")
    assert cfg.run.out == "runs/resnet32_contsup_k4_R1E_digits"
    preset = load_config("quickstart/resnet32_digits_k4_R1E")
    assert dataclasses.replace(preset, run=dataclasses.replace(preset.run, out=cfg.run.out)) == cfg


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet20\nsplit: uniform\nnum_modules: 2\nlr: 0.3\nepochs: 3\n")
    cfg = load_config(str(path), lr=0.05)
    assert (cfg.net.model, cfg.net.num_modules, cfg.optim.epochs, cfg.optim.lr) == ("resnet20", 2, 3, 0.05)
    assert cfg.run.out == "runs/c"


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=2.5), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(batch_size=True), "batch_size"),
        (dict(amp="fp8"), "amp"),
        (dict(device="gpu7"), "device"),
        (dict(method="nope"), "method"),
        (dict(context="R99E"), "context"),
        (dict(dataset="mnist"), "dataset"),
        (dict(nesterov="yes"), "nesterov"),
    ],
)
def test_bad_options_name_the_option(options, words):
    with pytest.raises(ValueError, match=words):
        resolve(**options)


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: resnet32\nlrate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'lrate'; valid keys are model, method, .*, out\b"):
        read_options(path)
    with pytest.raises(ValueError, match="no file or preset"):
        load_config("does/not/exist")


def test_config_files_read_exponents_as_numbers(tmp_path):
    """PyYAML follows YAML 1.1, where 5e-4 (no dot) is a string; config files take it as a number, as Python
    and YAML 1.2 do (a lr of 1e-3 was refused as "got '1e-3'"). Quoted, it stays a string."""
    path = tmp_path / "sci.yaml"
    path.write_text("model: resnet20\nlr: 1e-3\nweight_decay: 5E-4\nepochs: 2\n")
    config = load_config(str(path))
    assert (config.optim.lr, config.optim.weight_decay, config.optim.epochs) == (1e-3, 5e-4, 2)
    path.write_text("lr: '1e-3'\n")
    with pytest.raises(ValueError, match=r"lr must be a positive number, got '1e-3'"):
        load_config(str(path))


def test_resume_refuses_other_options_but_not_another_place():
    stored = resolve(**TINY, out="a").options()
    assert resumed_config(stored, {}, out="b").run.out == "b"
    assert resumed_config(stored, {"epochs": 2, "device": "cpu", "data_dir": "x"}, out="a").optim.epochs == 2
    with pytest.raises(ValueError, match=r"options: epochs \(2 → 3\), lr \(0.1 → 0.5\); resume it"):
        resumed_config(stored, {"lr": 0.5, "epochs": 3}, out="a")


def test_yaml_round_trip():
    cfg = resolve(**{**TINY, "split": [[2, 1]]}, lambdas=[5, 1, 0, 0], model_kwargs={}, out="x")

    assert resolve(flatten(yaml.safe_load(dump_yaml(cfg.to_dict(), header=["a comment"])), "x")) == cfg


# --- checkpoints and RNG -----------------------------------------------------------------------------------
def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    run = RunDir(tmp_path)
    run.save_checkpoint({"format": 2, "rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(run.load_checkpoint()["rng"])  # load_checkpoint uses weights_only=True
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []
    real_step = runner.train_step

    def step(*args, **kwargs):  # two batches per epoch: epoch 2 produces a NaN
        stats = real_step(*args, **kwargs)
        calls.append(1)
        return {**stats, "loss": float("nan")} if len(calls) > 2 else stats

    monkeypatch.setattr(runner, "train_step", step)
    cfg = resolve(**TINY, device="cpu", out=str(tmp_path / "run"))
    message = r"epoch 2: non-finite loss \(nan\) in batch 1 of 2.*\(epoch 1\) is kept"
    with pytest.raises(NonFiniteLossError, match=message):
        fit(cfg, log=lambda line: None)
    run = RunDir(tmp_path / "run")
    assert run.load_checkpoint()["epoch"] == 1
    assert len(run.read_metrics()) == 1 and not run.finished


def test_crash_between_metrics_and_checkpoint_resumes_without_a_duplicate_epoch(tmp_path):
    """Epoch 2's metrics line is written, its checkpoint is not: resuming redoes epoch 2 exactly once."""
    quiet = dict(log=lambda line: None)
    fit(resolve(**TINY, device="cpu", out=str(tmp_path / "reference")), **quiet)
    cfg = resolve(**TINY, device="cpu", out=str(tmp_path / "crashed"))
    with ctrl_c_before_checkpoint(2), pytest.raises(KeyboardInterrupt):
        fit(cfg, **quiet)
    crashed = RunDir(tmp_path / "crashed")
    assert [r["epoch"] for r in crashed.read_metrics()] == [1, 2] and crashed.load_checkpoint()["epoch"] == 1
    fit(cfg, resume=True, **quiet)

    timing = {"epoch_time_s", "train_time_s", "images_per_s"}
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]  # noqa: E731
    assert strip(crashed.read_metrics()) == strip(RunDir(tmp_path / "reference").read_metrics())


def test_resume_without_a_run_starts_one(tmp_path):
    summary = fit(resolve(**{**TINY, "epochs": 1}, device="cpu", out=str(tmp_path / "new")), resume=True,
                  log=lambda line: None)
    assert summary["epochs"] == 1 and RunDir(tmp_path / "new").finished


def test_bf16_mixed_precision_is_opt_in(tmp_path):
    assert resolve().run.amp == "none" and resolve().autocast_dtype is None
    cfg = resolve(**{**TINY, "epochs": 1, "limit_train": 32}, amp="bf16", device="cpu", out=str(tmp_path / "r"))
    assert cfg.autocast_dtype == torch.bfloat16
    summary = fit(cfg, log=lambda line: None)
    assert math.isfinite(RunDir(tmp_path / "r").read_metrics()[0]["train_loss"]) and 0 <= summary["test_acc"] <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_relu_backward_is_the_stock_decomposition_bit_for_bit(dtype):
    # --compile's ReLU backward (training.runner.inductor): the same bits as the stock decomposition, signed
    # zeros and infinite gradients included, a NaN gradient NaN alike; only a NaN in `self` differs
    from torch._decomp.decompositions import threshold_backward

    special = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 1e-30, -1e-30])
    g = torch.Generator().manual_seed(0)
    self = torch.cat([special, torch.randn(200, generator=g)]).to(dtype)
    grad = torch.cat([special, torch.randn(200, generator=g)]).to(dtype)
    self, grad = torch.cartesian_prod(self, grad).unbind(1)  # every pairing of the special values

    def bits(t):
        return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype])

    for s in (self, torch.relu(self)):  # any tensor, and ReLU's output (what autograd passes)
        ours, stock = runner.relu_backward(grad, s, 0), threshold_backward(grad, s, 0)
        number = ~torch.isnan(s)
        value = number & ~torch.isnan(stock)
        assert torch.equal(bits(ours[value]), bits(stock[value]))  # every bit: +0 stays +0, -0 stays -0
        eager = torch.ops.aten.threshold_backward(grad, s, 0)
        assert torch.equal(bits(ours[value]), bits(eager[value]))
        assert torch.isnan(ours[number & torch.isnan(stock)]).all()  # a NaN gradient passes as NaN (any payload)
        assert (ours[~number] == 0).all()  # where self is NaN: 0 here, the gradient there
    x = torch.randn(50, generator=g).to(dtype)
    assert torch.equal(bits(runner.relu_backward(grad[:50], x, 0.5)), bits(threshold_backward(grad[:50], x, 0.5)))


def test_channels_last_is_opt_in_trains_like_the_default_layout_and_resumes_in_either(tmp_path):
    assert resolve().run.channels_last is False
    options = {**TINY, "epochs": 1, "limit_train": 64, "device": "cpu"}
    nchw = runner.LocalRunner(resolve(**options, out=str(tmp_path / "a")), log=lambda line: None)
    last = runner.LocalRunner(resolve(**options, channels_last=True, out=str(tmp_path / "b")), log=lambda line: None)
    convs = [m.weight for m in last.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (a 1×1 kernel is both)
    a, b = (r.train_epoch(1, lambda step: 0.05) for r in (nchw, last))
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)  # another summation order, the same training
    # the weights after two steps: close, not equal (the gradients of biases that a BatchNorm follows are
    # rounding noise, ~1 relative, and BatchNorm biases' near-cancelling sums differ by ~3e-3 in one step)
    for (name, x), y in zip(nchw.net.state_dict().items(), last.net.state_dict().values()):
        assert torch.allclose(x, y, rtol=1e-2, atol=2e-3), name
    # a run trained in one layout resumes in the other: only where it lives and how it runs may change
    stored = resolve(**TINY, out="a").options()
    assert resumed_config(stored, {"channels_last": True}, out="a").run.channels_last
    refused = r"^channels_last: one process only .*pass --no-channels-last, or drop --parallel\.$"
    with pytest.raises(ValueError, match=refused):
        resolve(**TINY, channels_last=True, parallel="pipeline")


@pytest.mark.parametrize("first, second", [(False, True), (True, False)], ids=["nchw-then-cl", "cl-then-nchw"])
def test_a_run_stopped_in_one_layout_resumes_in_the_other(tmp_path, first, second):
    """A checkpoint written in one memory layout, restored in the other: weights, BatchNorm statistics and
    momentum come back bit for bit in the new layout, and the run finishes, training like the uninterrupted
    run up to the layouts' rounding."""
    quiet = dict(log=lambda line: None)
    fit(resolve(**TINY, device="cpu", out=str(tmp_path / "reference")), **quiet)
    with ctrl_c_before_checkpoint(2), pytest.raises(KeyboardInterrupt):
        fit(resolve(**TINY, device="cpu", channels_last=first, out=str(tmp_path / "run")), **quiet)
    run = RunDir(tmp_path / "run")
    saved = run.load_checkpoint()
    assert saved["epoch"] == 1

    config = resolve(**TINY, device="cpu", channels_last=second, out=str(tmp_path / "run"))
    restored = runner.LocalRunner(config, log=lambda line: None)
    restored.restore(run)
    state = restored.net.state_dict()
    assert state.keys() == saved["model"].keys() and all(torch.equal(state[k], saved["model"][k]) for k in state)
    convs = [m.weight for m in restored.net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert all(w.is_contiguous(memory_format=torch.channels_last) is second for w in convs)
    momentum = [s["momentum_buffer"] for s in restored.optimizer.state_dict()["state"].values()]
    assert momentum and all(torch.equal(a, b["momentum_buffer"]) for a, b in
                            zip(momentum, saved["optimizer"]["state"].values()))

    lines: list[str] = []
    summary = fit(config, resume=True, log=lines.append)
    assert summary["epochs"] == 2 and run.finished
    # config.yaml keeps how the run was started; the resume says what it changed
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"]["channels_last"] is first
    assert any(line.endswith(f"resuming after epoch 1, now with channels_last ({first!r} → {second!r})") for line in lines)
    # The layouts round differently, and 4 steps of batch-32 BatchNorm training amplify that: an uninterrupted
    # channels-last run's epoch-2 loss is 1.0e-3 from the default layout's on an AVX2 CPU (less on others);
    # a resume that dropped the momentum is 7.4e-3 from it.
    reference = [r["train_loss"] for r in RunDir(tmp_path / "reference").read_metrics()]
    assert [r["train_loss"] for r in run.read_metrics()] == pytest.approx(reference, rel=3e-3)


def test_channels_last_converts_4d_tensors_in_place_and_leaves_others():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv3d(4, 2, 1), torch.nn.Linear(2, 2))
    tensors = list(net.parameters())
    runner.to_channels_last(net)  # Module.to(memory_format=channels_last) refuses the 5-d Conv3d weight
    assert list(net.parameters()) == tensors  # the same Parameter objects: an optimizer built before keeps them
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    assert net[1].weight.dim() == 5 and net[1].weight.is_contiguous() and net[2].weight.is_contiguous()


def test_precise_batchnorm_is_the_plain_average_over_batches_and_leaves_the_rest_as_it_was():
    from torch import nn

    from locallearn.training.runner import precise_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(2))
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1), torch.zeros(8, dtype=torch.long)) for i in range(5)]
    net(batches[0][0])  # materialise the lazy layer
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    assert precise_batchnorm(net, batches, 3) == 3
    with torch.no_grad():
        features = [net[0](x) for x, _ in batches[:3]]
    bn = net[1]
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, expected_var, rtol=1e-5)
    assert bn.momentum == 0.1 and not net.training and not bn.training and int(bn.num_batches_tracked) == 3
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="no BatchNorm"):
        precise_batchnorm(nn.Sequential(nn.Linear(2, 2)), batches, 1)
