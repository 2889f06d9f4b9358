"""Your own network and data: an nn.Sequential cut at its children (1 and 3 channels), a nested model cut at
named submodules with ``ll.units``, a factory's import path on the command line (train, eval, resume), and
the refusals: units that do not chain, a module or attribute that does not exist, a factory that returns no
nn.Module."""

import json
import os
import signal
import sys
import textwrap

import pytest
import torch
from torch import nn

import locallearn as ll
from locallearn.models.custom import WHOLE
from locallearn.cli import main
from locallearn.training import RunDir

from checks import assert_gradient_isolation


def sequential_cnn(in_channels=3, classes=10):
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)),
    )


def batch(channels, size=16, n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, size, size, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method, options", [
    ("contsup", dict(context="R1E")), ("infopro", {}), ("greedy", {}), ("dgl", {}), ("featrecon", {}),
    ("contsup", dict(context="R2", reconstruct=True, local_loss="contrast")),
])
def test_a_sequential_cnn_trains_with_every_method(channels, method, options):
    torch.manual_seed(0)
    net = ll.build(sequential_cnn(channels), method=method, num_modules=3, image_size=16, in_channels=channels,
                   **options)
    assert net.config.split == "auto" and net.backbone.unit_keys == [0, 1, 2, 3, 4]  # no table: computed
    if net.config.reconstruct:
        assert net.objectives[0].image_decoder.net[3].out_channels == channels  # the model's own channels
    x, y = batch(channels)
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert all(torch.isfinite(v) for v in stats.values())
    assert_gradient_isolation(net, x, y)


def test_cuts_name_units_by_index_and_k1_equals_plain_training():
    seq = sequential_cnn()
    net = ll.build(seq, method="greedy", num_modules=3, split=[1, 2], image_size=16)
    assert net.cuts == [1, 2] and [b - a for a, b in net.bounds] == [2, 1, 2]
    for cut, why in ((7, "7 is out of range"), (4, "4 is the last unit, the classifier, after which no module is left"),
                     ("stem", "'stem' names no unit")):
        with pytest.raises(ValueError, match=rf"cut {why}; valid cuts are the units 0, 1, 2, 3"):
            ll.build(sequential_cnn(), method="greedy", num_modules=2, split=[cut], image_size=16)
    torch.manual_seed(1)
    plain = sequential_cnn()
    e2e = ll.build(sequential_cnn(), method="e2e", image_size=16)
    e2e.backbone.load_state_dict({k.split(".", 1)[1]: v for k, v in ll.build(plain, method="e2e", image_size=16).state_dict().items()})
    x, y = batch(3)
    stats = ll.train_step(e2e, x, y, torch.optim.SGD(e2e.parameters(), lr=0.1))
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(plain(x), y)
    loss.backward()
    opt.step()
    assert float(stats["loss"]) == pytest.approx(loss.item(), rel=1e-6)
    for a, b in zip(e2e.backbone.units.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


class Nested(nn.Module):
    """A model whose forward is not a plain sequence of its children (it flattens before the classifier)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.ModuleDict({"a": nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                                   "b": nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())})
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.pool(self.body["b"](self.body["a"](self.stem(x)))).flatten(1))


def test_a_nested_model_is_cut_at_named_submodules():
    model = Nested()
    seq = ll.units(model, ["stem", "body.a", "body.b", ("head", nn.Sequential(model.pool, nn.Flatten(), model.fc))])
    net = ll.build(seq, method="contsup", context="R0", num_modules=2, split=["body_a"], image_size=16)
    assert net.cuts == ["body_a"] and net.backbone.units[0] is model.stem  # the model's own modules, not copies
    x, y = batch(3)
    ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    assert_gradient_isolation(net, x, y)
    net.eval()
    model.eval()
    assert torch.allclose(net(x), model(x), atol=1e-6)  # with R0 context the inference forward is the model's
    # named units are cut by index too, counted from 0 (the docs and --help say indices or names)
    other = Nested()
    by_index = ll.build(ll.units(other, ["stem", "body.a", "body.b", ("head", nn.Sequential(other.pool, nn.Flatten(),
                        other.fc))]), method="greedy", num_modules=2, split=[1], image_size=16)
    assert by_index.cuts == ["body_a"]
    with pytest.raises(ValueError, match=r"split: cut 3 is the last unit, the classifier"):
        ll.build(seq, method="greedy", num_modules=2, split=[3], image_size=16)
    with pytest.raises(ValueError, match=r"units: Nested has no submodule 'neck'; its children are stem, body"):
        ll.units(model, ["stem", "neck"])
    with pytest.raises(ValueError, match=r"2 parameter\(s\) of Nested belong to no unit \(first: fc.weight\)"):
        ll.units(model, ["stem", "body.a", "body.b"])
    for names in (["stem", "body.a", "body.a"], ["stem", "stem", "body.a"]):
        with pytest.raises(ValueError, match=r"units: '(body.a|stem)' is named twice"):
            ll.units(model, names)
    with pytest.raises(ValueError, match=r"units: 'again' is a module already given under another name"):
        ll.units(model, ["stem", ("again", model.stem), "body.a"])
    for names, inner in ((["stem", "body.a", "body"], "'body.a' lies inside 'body'"),
                         (["stem", "body", "body.b"], "'body.b' lies inside 'body'")):
        with pytest.raises(ValueError, match=rf"^units: {inner}; give one or the other"):
            ll.units(model, names)  # the inner unit would run twice and be trained by two modules
    with pytest.raises(ValueError, match=r"no submodule 'body.c'; the children of 'body' are a, b\.$"):
        ll.units(model, ["stem", "body.c"])
    dotted = ll.build(seq, method="greedy", num_modules=2, split=["body.a"], image_size=16)  # the name as given
    assert dotted.cuts == ["body_a"]


def test_a_flat_sequential_of_layers_is_cut_only_where_there_are_feature_maps():
    def flat():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    x, y = batch(3)
    for method in ("greedy", "dgl", "infopro", "featrecon", "contsup"):
        for split in ("auto", "balanced"):  # the cost model prices no cut after the flattening
            net = ll.build(flat(), method=method, num_modules=3, split=split, image_size=16)
            assert all(len(shape) == 3 for shape in net.boundary_shapes), (method, split)
            ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
    with pytest.raises(ValueError, match=r"^split: cut 7 outputs vectors \(32,\), and local objectives need feature "
                                         r"maps \(C, H, W\) or tokens \(L, D\) at every cut; cut before the flattening"):
        ll.build(flat(), method="greedy", num_modules=2, split=[7], image_size=16)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(ValueError, match=r"^split: no way to cut this model into 2 modules leaves feature maps "
                                         r"\(C, H, W\) or tokens \(L, D\) at every cut"):  # not a cut after the classifier
        ll.build(mlp, method="dgl", num_modules=2, image_size=16)
    with pytest.raises(ValueError, match=r"^split: cut 1 outputs vectors"):
        ll.build(mlp, method="dgl", num_modules=2, split=[1], image_size=16)


class Patches(nn.Module):
    """(B, C, S, S) → tokens (B, L, D): a patch embedding, as a transformer of one's own starts."""

    def __init__(self, dim: int = 16, patch: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MeanHead(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=1))


def token_model() -> nn.Sequential:
    torch.manual_seed(0)
    block = lambda: nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)  # noqa: E731
    return nn.Sequential(Patches(), block(), block(), block(), MeanHead())


def test_cuts_that_give_tokens_get_heads_that_read_tokens_and_one_line_refusals_elsewhere():
    x, y = batch(3)
    net = ll.build(token_model(), method="greedy", aux_head="token", num_modules=2, split=[1], image_size=16)
    assert net.boundary_shapes == [(16, 16)]  # L = 16 patches of D = 16 features
    head = net.objectives[0].head
    assert head.norm.normalized_shape == (16,) and head.fc.in_features == 16  # normalises D, then the token mean
    tokens = torch.randn(3, 16, 16)
    with torch.no_grad():
        want = head.fc(nn.functional.layer_norm(tokens, (16,), head.norm.weight, head.norm.bias).mean(dim=1))
        assert torch.equal(head(tokens), want)
    for options in (dict(method="greedy", aux_head="token"), dict(method="greedy"),  # greedy's own head: linear
                    dict(method="contsup", context="R0", aux_head="token", local_loss="contrast")):
        net = ll.build(token_model(), num_modules=3, image_size=16, **options)
        metrics = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01))
        assert torch.isfinite(metrics["loss"]), options
    linear = ll.build(token_model(), method="greedy", num_modules=2, split=[1], image_size=16).objectives[0].head
    assert linear[1].in_features == 16 and linear(tokens).shape == (3, 10)  # the mean over tokens → Linear(D)
    for options, words in [
        (dict(method="contsup"), r"^aux_head: 1c2f is convolutional and needs a feature map \(C, H, W\) at every cut, "
                                 r"but a cut gives \(16, 16\); use aux_head 'token'.*family = 'transformer'"),
        (dict(method="dgl"), r"^aux_head: dgl is convolutional.*or 'linear'\.$"),  # family does not change dgl's head
        (dict(method="greedy", aux_head="4c1f"), r"^aux_head: 4c1f is convolutional"),
        (dict(method="infopro", aux_head="token"), r"^reconstruct: InfoPro's image decoder upsamples a feature map"),
        (dict(method="featrecon", aux_head="token"), r"^feature decoder: needs \(C, H, W\) feature maps on both sides"),
        (dict(method="contsup", aux_head="token", context="R1"), r"^context: mode R1 needs feature maps"),
    ]:
        with pytest.raises(ValueError, match=words):
            ll.build(token_model(), num_modules=2, split=[1], image_size=16, **options)
    family = token_model()
    family.family = "transformer"  # 'auto' then picks the token head
    assert ll.build(family, method="contsup", context="R0", num_modules=2, image_size=16).config.aux_head == "token"


def test_units_of_something_that_is_not_a_module_is_one_line():
    with pytest.raises(ValueError, match=r"^units: expected the model \(an nn.Module\) to cut, got str"):
        ll.units("resnet32", ["a"])


class _Between(nn.Module):
    """c1 → c2 → c3 → head, with a skip connection (c1's output added to c3's) or a ReLU between c2 and c3."""

    def __init__(self, skip: bool = False, relu: bool = False, returns: str = "logits"):
        super().__init__()
        self.skip, self.relu, self.returns = skip, relu, returns
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5))
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        a = self.c1(x)
        b = self.c2(a)
        b = nn.functional.relu(b) if self.relu else b
        logits = self.head(self.c3(b) + (a if self.skip else 0))
        return {"logits": logits} if self.returns == "dict" else logits


def test_units_that_leave_out_what_the_forward_does_between_them_are_refused():
    """A skip connection across units, or a function applied between them, is a network the units alone do not
    compute: training would train another model than the user's, silently. Compared once, in eval mode, with
    the model's own forward; the modes of the model are kept as they were."""
    for options in (dict(skip=True), dict(relu=True)):
        model = _Between(**options)
        with pytest.raises(ValueError, match=r"^model: the units \(c1, c2, c3, head\) run one after another do not "
                                             r"compute _Between's forward \(its logits differ by up to .* a skip "
                                             r"connection, or a function such as F.relu"):
            ll.build(ll.units(model, ["c1", "c2", "c3", "head"]), method="greedy", num_modules=2, in_channels=1,
                     image_size=12)
        assert all(m.training for m in model.modules())  # put back in training mode
    plain = _Between()
    net = ll.build(ll.units(plain, ["c1", "c2", "c3", "head"]), method="greedy", num_modules=2, in_channels=1,
                   image_size=12)
    assert all(m.training for m in plain.modules()) and not any(WHOLE in m.__dict__ for m in net.modules())
    # what is not refused: log-probabilities (a forward ending in log_softmax, as cross-entropy takes logits), a
    # unit random even in eval mode (nothing to compare), a unit replaced after units() (the model is stale)
    class LogProbabilities(_Between):
        def forward(self, x):
            return nn.functional.log_softmax(super().forward(x), dim=1)

    class Noisy(nn.Module):
        def forward(self, x):
            return nn.functional.dropout(x, 0.1)  # training=True whatever the mode

    noisy = _Between(skip=True)
    noisy.c3 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Noisy())
    replaced = ll.units(_Between(skip=True), ["c1", "c2", "c3", "head"])
    replaced.c3 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    for cut in (ll.units(LogProbabilities(), ["c1", "c2", "c3", "head"]), ll.units(noisy, ["c1", "c2", "c3", "head"]),
                replaced):
        ll.build(cut, method="greedy", num_modules=2, in_channels=1, image_size=12)
    # a forward whose output is not the units' logits cannot be compared: built as before
    ll.build(ll.units(_Between(skip=True, returns="dict"), ["c1", "c2", "c3", "head"]), method="greedy",
             num_modules=2, in_channels=1, image_size=12)


def test_units_that_do_not_chain_are_refused_naming_both():
    seq = sequential_cnn()
    seq[2] = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1))  # expects 16 channels, gets 32
    with pytest.raises(ValueError, match=r"^model: unit 2 \(Sequential\) cannot take the output of unit 1 "
                                         r"\(Sequential\), of shape \(32, 8, 8\)"):
        ll.build(seq, method="greedy", num_modules=2, image_size=16)
    with pytest.raises(ValueError, match=r"^model: unit 0 \(Sequential\) cannot take the input image, of shape "
                                         r"\(3, 16, 16\) .*; if the model is right, give the data's in_channels"):
        ll.build(sequential_cnn(in_channels=1), method="greedy", num_modules=2, image_size=16)
    with pytest.raises(ValueError, match="needs the input size"):
        ll.build(sequential_cnn(), method="greedy", num_modules=2)
    with pytest.raises(ValueError, match="must map features to logits"):
        ll.build(nn.Sequential(*list(sequential_cnn())[:3]), method="greedy", num_modules=2, image_size=16)


FACTORIES = '''
from torch import nn


def tiny_cnn(num_classes=10, in_channels=3, width=8):
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)),
    )


def not_a_module():
    return [1, 2]


LAYERS = 3


def raises(num_classes=10):
    raise RuntimeError("boom inside factory")


def seven_classes():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)))


def needs_depth(depth, num_classes=10):
    raise AssertionError("never called: depth is not given")


def grey_cnn():  # a model for one-channel images, with no in_channels parameter
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)))
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("my_models", "broken", "fails"):
        sys.modules.pop(name, None)


def test_a_factory_of_your_own_trains_evaluates_and_resumes_from_the_command_line(user_package, capsys, monkeypatch):
    from locallearn.training import runner

    args = ["train", "--model", "my_models:tiny_cnn", "--model-kwargs", "{width: 4}", "--method", "contsup",
            "--num-modules", "2", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--device", "cpu"]
    out = user_package / "runs" / "mine"
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    config = (out / "config.yaml").read_text()
    assert "model: my_models:tiny_cnn" in config and "split: auto" in config
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert "checkpoint after epoch 1/1" in capsys.readouterr().out
    # a longer run, stopped by Ctrl-C in epoch 2: --resume continues it from the factory's name
    real, calls = runner.train_one_epoch, []

    def ctrl_c_in_epoch_2(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a stop request, acted on before the epoch's first batch
        return real(*a, **kw)

    monkeypatch.setattr(runner, "train_one_epoch", ctrl_c_in_epoch_2)
    two = user_package / "runs" / "two"
    assert main([*args, "--epochs", "2", "--out", str(two)]) == 130
    assert [r["epoch"] for r in RunDir(two).read_metrics()] == [1] and not RunDir(two).finished
    monkeypatch.setattr(runner, "train_one_epoch", real)
    capsys.readouterr()
    assert main(["train", "--out", str(two), "--resume"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in RunDir(two).read_metrics()] == [1, 2] and RunDir(two).finished
    assert main(["report", str(out), str(user_package / "runs" / "two")]) == 0


def test_the_bench_grids_measure_a_factory_of_your_own(user_package, capsys):
    import json

    grid = ["--models", "my_models:tiny_cnn", "--methods", "greedy", "--num-modules", "2", "--batch-sizes", "2"]
    assert main(["bench", "memory", *grid, "--out", str(user_package / "b")]) == 2  # an nn.Sequential has no size
    assert capsys.readouterr().err.strip() == ("locallearn: error: image_size: my_models:tiny_cnn has no input size "
                                               "of its own (an nn.Sequential); pass --image-size.")
    assert main(["bench", "memory", *grid, "--image-size", "16", "--out", str(user_package / "b")]) == 0
    rows = json.loads((user_package / "b" / "memory.json").read_text())["rows"]
    assert [(r["model"], r["method"], r["status"]) for r in rows] == [("my_models:tiny_cnn", "e2e", "ok"),
                                                                      ("my_models:tiny_cnn", "greedy", "ok")]
    assert 0 < rows[1]["activation_ratio"] < 1


@pytest.mark.parametrize("model, words", [
    ("no_such_module:f", "cannot import 'no_such_module'"),
    ("my_models:missing", "module 'my_models' has no attribute 'missing'"),
    ("my_models:LAYERS", "my_models:LAYERS is a int, not a factory"),
    ("my_models:not_a_module", "neither a Backbone nor an nn.Sequential"),
    ("my_models:raises", "model: my_models:raises(...) raised RuntimeError: boom inside factory (my_models.py, line "),
    ("my_models:seven_classes", "num_classes: the model's last unit gives 7 logits but the run has num_classes=10"),
    ("my_models:needs_depth", "model: my_models:needs_depth cannot be called with num_classes (needs_depth() missing 1 "
                              "required positional argument: 'depth'); give its other arguments with --model-kwargs"),
    ("broken:f", "model: importing 'broken' failed: SyntaxError: '(' was never closed (broken.py, line 2); fix the module"),
    ("fails:f", "model: importing 'fails' failed: ZeroDivisionError: division by zero (fails.py, line 1)"),
])
def test_bad_factories_are_one_line(user_package, capsys, model, words):
    (user_package / "broken.py").write_text("def f():\n    return nn.Sequential(\n")
    (user_package / "fails.py").write_text("x = 1 / 0\n")
    assert main(["train", "--model", model, "--num-modules", "2", "--image-size", "32", "--out", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_a_factory_without_in_channels_gets_the_datas_channels_checked_not_passed(user_package):
    """A factory without an in_channels parameter is not handed one: its model is built and must take the
    data's images (it was refused as "unknown option 'in_channels' ... valid options are none" even for a
    one-channel model on one-channel data)."""
    net = ll.build("my_models:grey_cnn", method="greedy", num_modules=2, split="uniform", in_channels=1, image_size=16)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"unit 0 \(Conv2d\) cannot take the input image, of shape \(1, 16, 16\) .*"
                                         r"else make it take the data's images \(a factory with in_channels and "
                                         r"image_size parameters receives them\)\.$"):
        ll.build("my_models:seven_classes", method="greedy", num_modules=2, split="uniform", in_channels=1,
                 image_size=16)


def test_build_takes_the_classes_from_a_fixed_width_classifier_or_checks_them():
    """Without num_classes or a dataset, a model's own classifier width sets the classes, so the auxiliary
    heads classify what the network does (they were 10-way, the default, beside a 100-way classifier, and a
    label of 50 failed in a head's cross-entropy); the network is the one built with num_classes given. Given,
    the width must match, in one line."""
    torch.manual_seed(0)
    net = ll.build(sequential_cnn(classes=100), method="contsup", num_modules=3, image_size=16)
    assert net.config.num_classes == 100 and net(torch.randn(2, 3, 16, 16)).shape == (2, 100)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 50, 99, 7])
    stats = ll.train_step(net, images, labels, torch.optim.SGD(net.parameters(), lr=0.1))
    assert all(torch.isfinite(v) for v in stats.values())
    torch.manual_seed(0)
    given = ll.build(sequential_cnn(classes=100), method="contsup", num_modules=3, image_size=16, num_classes=100)
    before_step = given.state_dict()
    assert list(before_step) == list(net.state_dict())
    torch.manual_seed(0)
    again = ll.build(sequential_cnn(classes=100), method="contsup", num_modules=3, image_size=16)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), before_step.values()))
    with pytest.raises(ValueError, match=r"^num_classes: the model's last unit gives 10 logits but the run has "
                                         r"num_classes=7 \(the data's classes\); make the two agree"):
        ll.build(sequential_cnn(classes=10), method="contsup", num_modules=3, image_size=16, num_classes=7)
    with pytest.raises(ValueError, match=r"last unit gives 100 logits but the run has num_classes=10"):
        ll.build(sequential_cnn(classes=100), method="contsup", num_modules=3, dataset="cifar10")


def test_more_bad_arguments_of_train_are_one_line(tmp_path):
    from locallearn.training import train

    x, y = torch.randn(8, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    good = [(x, y)]
    common = dict(num_classes=4, method="greedy", num_modules=2, epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"^out: expected the run directory, a path, got None\.$"):
        train(sequential_cnn(in_channels=1, classes=4), good, good, out=None, log=lambda line: None, **common)
    assert not (tmp_path / "None").exists()
    with pytest.raises(ValueError, match=r"^log: expected a function taking a line"):
        train(sequential_cnn(in_channels=1, classes=4), good, good, out=tmp_path / "l", log=None, **common)
    # a later batch of other channels: the step's own check, not a convolution's RuntimeError
    with pytest.raises(ValueError, match=r"^images: 3 channels, but the network takes 1"):
        train(sequential_cnn(in_channels=1, classes=4), good + [(torch.randn(8, 3, 16, 16), y)], good,
              out=tmp_path / "c", log=lambda line: None, **common)
    # a model object left diverged by a non-finite loss is said to be so
    with pytest.raises(ValueError, match=r"non-finite loss .* The model object given was trained in place and holds "
                                         r"the diverged weights"):
        train(sequential_cnn(in_channels=1, classes=4), good + [(x * float("nan"), y)], good, out=tmp_path / "n",
              log=lambda line: None, **common)


def test_labels_beyond_the_classes_are_one_line_from_python(tmp_path):
    from locallearn.training import train

    x, y = torch.randn(8, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 7])
    data, good = [(x, y)], [(x, y % 4)]
    for where, train_data, test_data in (("training batch 1", data, good), ("test batch 1", good, data),
                                         ("training batch 2", good + data, good), ("test batch 2", good, good + data)):
        with pytest.raises(ValueError, match=rf"^labels: {where} holds label 7 but the network has 4 classes \(labels "
                                             r"0\.\.3\); give num_classes as the number of classes of the data\.$"):
            train(sequential_cnn(in_channels=1, classes=4), train_data, test_data, out=tmp_path / where, num_classes=4,
                  method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)
    # the first batches are checked before an --overwrite clears the run it replaces
    finished = tmp_path / "finished"
    train(sequential_cnn(in_channels=1, classes=4), good, good, out=finished, num_classes=4, method="greedy",
          num_modules=2, epochs=1, device="cpu", log=lambda line: None)
    before = sorted(p.name for p in finished.iterdir())
    with pytest.raises(ValueError, match=r"^labels: test batch 1 holds label 7"):
        train(sequential_cnn(in_channels=1, classes=4), good, data, out=finished, overwrite=True, num_classes=4,
              method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)
    assert sorted(p.name for p in finished.iterdir()) == before
    with pytest.raises(ValueError, match=r"^num_classes: the model's last unit gives 4 logits but the run has "
                                         r"num_classes=5 \(the data's classes\); make the two agree"):
        train(sequential_cnn(in_channels=1, classes=4), good, good, out=tmp_path / "b", num_classes=5,
              method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)


def test_train_from_a_rank_of_a_script_of_ones_own_runs_in_that_process(tmp_path, monkeypatch):
    from locallearn.training import train

    monkeypatch.setenv("WORLD_SIZE", "2")  # e.g. one run per rank, each into its own directory
    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)]
    summary = train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "rank0", num_classes=4,
                    method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)
    assert summary["epochs"] == 1


def test_an_option_the_run_would_not_use_is_refused_from_python_as_from_the_command_line(tmp_path):
    from locallearn.training import train

    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)]
    common = dict(num_classes=4, num_modules=2, epochs=1, device="cpu", log=lambda line: None)
    with pytest.raises(ValueError, match=r"^temperature: temperature=\.\.\. is the contrastive loss's, and this run's "
                                         r"local loss is not contrastive, so it would change nothing but config\.yaml; "
                                         r"drop it, or add local_loss='contrast'\.$"):
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "a", method="greedy",
              temperature=0.1, **common)
    assert not (tmp_path / "a").exists()  # refused before the run directory is made
    summary = train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "b", method="greedy",
                    local_loss="contrast", temperature=0.1, **common)
    assert summary["epochs"] == 1
    # the data is the batches: the command line's data options would only be recorded
    for name, value in (("limit_train", 8), ("limit_test", 4), ("data_dir", "/tmp"), ("dataset", "digits")):
        with pytest.raises(ValueError, match=rf"^{name}: batches given from Python are used as they come, so "
                                             rf"{name}=\.\.\. would change nothing but config\.yaml; drop it"):
            train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "c", **{name: value}, **common)
    # a size or channel count other than the batches' would size and split the network for other images
    with pytest.raises(ValueError, match=r"^image_size: the first training batch's images have image_size=16, not 32; "
                                         r"drop image_size=, or give images of that shape\.$"):
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "c", image_size=32, **common)
    with pytest.raises(ValueError, match=r"^in_channels: the first training batch's images have in_channels=1, not 3"):
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "c", in_channels=3, **common)
    # one process: the pipeline's options are refused, not recorded for a run that trains without them
    with pytest.raises(ValueError, match=r"^parallel: locallearn.training.train runs in this one process, so not as a "
                                         r"pipeline; a pipeline trains a dataset or an image folder"):
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "c", parallel="pipeline", **common)
    assert not (tmp_path / "c").exists()
    summary = train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "d", image_size=None,
                    batch_size=None, method="greedy", **common)  # None: not given, the batches' own
    assert summary["epochs"] == 1


def test_a_model_object_trained_twice_is_said_to_start_from_the_first_runs_weights(tmp_path):
    from locallearn.training import train

    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)]
    model, lines = sequential_cnn(in_channels=1, classes=4), []
    common = dict(num_classes=4, method="greedy", num_modules=2, epochs=1, device="cpu", log=lines.append)
    train(model, data, data, out=tmp_path / "a", **common)
    assert not any(line.startswith("warning:") for line in lines)
    trained = [p.clone() for p in model.parameters()]
    train(model, data, data, out=tmp_path / "b", **common)
    warning = (f"warning: this model object was trained by an earlier train() into {tmp_path / 'a'}: this run "
               "starts from those weights")
    assert sum(line.startswith(warning) for line in lines) == 1
    assert not all(torch.equal(a, b) for a, b in zip(trained, model.parameters()))  # trained further, in place


def test_the_start_line_says_how_many_batches_an_epoch_has_or_that_it_is_unknown(tmp_path):
    from locallearn.training import train

    batches = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)] * 2

    class Unsized:  # an iterable without len(), such as a stream
        def __iter__(self):
            return iter(batches)

    common = dict(num_classes=4, method="greedy", num_modules=2, epochs=1, device="cpu")
    for data, words, out in ((batches, "(2 per epoch)", "a"), (Unsized(), "(their number per epoch unknown)", "b")):
        lines = []
        train(sequential_cnn(in_channels=1, classes=4), data, batches, out=tmp_path / out, log=lines.append, **common)
        assert any(line.startswith("  data: batches given from Python " + words) for line in lines), lines


@pytest.mark.parametrize("images, labels, words", [
    (torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.arange(4), "images must be floating point (normalised in "
                                                                    "your loader), got torch.uint8"),
    (torch.zeros(4, 1, 16, 16), torch.arange(4).float(), "labels must be an int64 (or uint8) tensor of class indices, "
                                                          "one per image (4,), got torch.float32 (4,); e.g. labels.long()."),
    (torch.zeros(4, 1, 16, 16), torch.arange(4).view(4, 1), "got torch.int64 (4, 1)"),
])
def test_batches_of_the_wrong_types_are_one_line_from_python(tmp_path, images, labels, words):
    from locallearn.training import train

    with pytest.raises(ValueError, match="^training data: ") as err:
        train(sequential_cnn(in_channels=1, classes=4), [(images, labels)], [(images, labels)], out=tmp_path / "a",
              num_classes=4, method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "a").exists()


def test_a_dataset_numpy_batches_and_batches_of_three_are_each_named_from_python(tmp_path):
    """What a user passes by mistake: the Dataset itself (items are single images), NumPy arrays, a loader of
    (images, labels, extra) — each said as what it is, not as a shape or as "expected a DataLoader"."""
    from torch.utils.data import DataLoader, TensorDataset

    from locallearn.training import train

    images, labels = torch.randn(8, 1, 16, 16), torch.arange(8) % 4
    cases = [
        (TensorDataset(images, labels), "a Dataset gives one image at a time (the first of shape (1, 16, 16)), not "
                                        "batches; wrap it in a DataLoader, e.g. DataLoader(data, batch_size=64"),
        ([(images.numpy(), labels)], "images must be a torch tensor, got ndarray of shape (8, 1, 16, 16); e.g. "
                                     "torch.as_tensor(images)"),
        (DataLoader(TensorDataset(images, labels, labels), batch_size=4),
         "batches must be (images, labels) pairs, got batches of 3 (Tensor, Tensor, Tensor); e.g. a collate_fn"),
    ]
    for data, words in cases:
        with pytest.raises(ValueError) as err:
            train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "a", num_classes=4,
                  method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)
        assert str(err.value).startswith(f"training data: {words}") and "\n" not in str(err.value)
        assert not (tmp_path / "a").exists()


def test_test_data_is_checked_like_the_training_data_before_training(tmp_path):
    from locallearn.training import train

    good = [(torch.randn(4, 1, 16, 16), torch.arange(4))]
    cases = [
        ([], "test data: it holds no batch; give at least one (images, labels) batch."),
        ([{"image": torch.randn(4, 1, 16, 16), "label": torch.arange(4)}],
         "test data: batches must be (images, labels) pairs, got a dict with keys image, label"),
        ([(torch.randn(4, 1, 16, 16).double(), torch.arange(4))],
         "test data: images are torch.float64 but the network computes in torch.float32; e.g. images.to(torch.float32)."),
        ([(torch.randn(4, 3, 16, 16), torch.arange(4))], "test data: images of shape (3, 16, 16), the training data's "
                                                         "(1, 16, 16); give both at the channels and size"),
        ([(torch.randn(4, 1, 12, 12), torch.arange(4))], "test data: images of shape (1, 12, 12)"),
    ]
    for test_data, words in cases:
        with pytest.raises(ValueError) as err:
            train(sequential_cnn(in_channels=1, classes=4), good, test_data, out=tmp_path / "a", num_classes=4,
                  method="greedy", num_modules=2, epochs=1, device="cpu", log=lambda line: None)
        assert str(err.value).startswith(words) and "\n" not in str(err.value)
        assert not (tmp_path / "a").exists()  # refused before anything is written


def test_reconstruction_from_normalised_batches_needs_their_normalisation(tmp_path):
    """InfoPro reconstructs the [0, 1] image from the batches; a loader's normalised batches, without image_mean
    and image_std, were taken as that image (the target clamped): refused naming them; with them, trained."""
    from locallearn.training import train

    torch.manual_seed(0)
    batches = [((torch.rand(4, 1, 16, 16) - 0.5) / 0.25, torch.arange(4))]
    options = dict(out=tmp_path / "a", num_classes=4, method="infopro", num_modules=2, epochs=1, device="cpu",
                   log=lambda line: None)
    with pytest.raises(ValueError, match=r"^image_mean: the local losses reconstruct the image in \[0, 1\] from the "
                                         r"batches, but the first training batch holds values in \[-2, 2\] "
                                         r"\(normalised by your loader\?\); pass image_mean=\.\.\. and image_std="):
        train(sequential_cnn(in_channels=1, classes=4), batches, batches, **options)
    assert not (tmp_path / "a").exists()
    summary = train(sequential_cnn(in_channels=1, classes=4), batches, batches, image_mean=[0.5], image_std=[0.25],
                    **options)
    assert summary["epochs"] == 1
    unit = [(torch.rand(4, 1, 16, 16), torch.arange(4))]  # [0, 1] images: the image itself, as before
    assert train(sequential_cnn(in_channels=1, classes=4), unit, unit, **{**options, "out": tmp_path / "b"})["epochs"] == 1


def test_a_generator_is_refused_before_its_first_batch_is_taken(tmp_path):
    from locallearn.training import train

    batches = ((torch.randn(4, 1, 16, 16), torch.arange(4)) for _ in range(2))  # iterable once only
    with pytest.raises(ValueError, match=r"^training data: an iterator or a generator can be iterated only once, "
                                         r"and training goes over the data once per epoch; give a DataLoader or a "
                                         r"list of batches\.$"):
        train(sequential_cnn(in_channels=1, classes=4), batches, [(torch.randn(4, 1, 16, 16), torch.arange(4))],
              out=tmp_path / "a", num_classes=4, method="greedy", num_modules=2, epochs=2, device="cpu",
              log=lambda line: None)


def test_training_from_python_on_a_dataloader_writes_the_same_run_directory(tmp_path, capsys):
    from torch.utils.data import DataLoader, TensorDataset

    from locallearn.training import RunDir, load_net, train

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 16, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    train_data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    test_data = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    model = sequential_cnn(in_channels=1, classes=4)
    out = tmp_path / "mine"
    lines = []
    summary = train(model, train_data, test_data, out=out, num_classes=4, method="contsup", num_modules=3, epochs=2,
                    device="cpu", log=lines.append)
    assert summary["epochs"] == 2 and 0 <= summary["test_acc"] <= 1
    assert lines[-1].endswith(f"`locallearn.training.load_net('{out}', model=...)` loads its network")  # not eval
    run = RunDir(out)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2] and run.finished
    config = (out / "config.yaml").read_text()
    assert "dataset: iterable" in config and "model: object:Sequential" in config and "in_channels: 1" in config
    assert "batch_size: 16" in config  # the loader's, not the default 64
    with pytest.raises(ValueError, match=r"^batch_size: batches given from Python come at their own size \(16 in "
                                         r"the first\), not batch_size=32; drop batch_size=, or batch your data so\.$"):
        train(model, train_data, test_data, out=tmp_path / "y", num_classes=4, batch_size=32)
    net = load_net(out, model=model)
    assert net(x[:2]).shape == (2, 4)
    # the command line says how to evaluate such a run, in one line
    assert main(["eval", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "given as a Python object" in err and "load_net(run_dir, model=your_model)" in err
    with pytest.raises(ValueError, match=r"load_net\(run_dir, model=your_model\)"):
        load_net(out)
    with pytest.raises(ValueError, match="num_classes: batches given from Python need num_classes"):
        train(model, train_data, test_data, out=tmp_path / "x")


def test_an_image_folder_trains_and_records_its_classes(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("test", 4)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--image-size", "16",
                 "--model", "resnet20", "--num-modules", "2", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["class_names"] == ["cat", "dog"] and summary["dataset"] == "imagefolder"
    config = (out / "config.yaml").read_text()
    assert "num_classes: 2" in config and "image_size: 16" in config and "split: auto" in config  # no table
    assert main(["eval", str(out), "--device", "cpu"]) == 0


def test_a_python_run_resumes_with_the_options_it_was_started_with(tmp_path, monkeypatch):
    """An option not given keeps its stored value on resume, as with `locallearn train --resume`: a run of an
    earlier release, whose AdamW defaults were SGD's rates, resumes (it was refused: lr 0.1 → 0.001)."""
    from locallearn.training import train
    from locallearn.training import config as training_config

    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)]
    common = dict(num_classes=4, method="greedy", num_modules=2, epochs=2, device="cpu", optimizer="adamw",
                  warmup_epochs=0, log=lambda line: None)
    out = tmp_path / "run"
    with monkeypatch.context() as earlier:
        earlier.setitem(training_config.OPTIMIZER_DEFAULTS, "adamw",
                        {**training_config.OPTIMIZER_DEFAULTS["adamw"], "lr": 0.1, "warmup_lr": 0.01})
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=out, **common)
    run = RunDir(out)  # as if stopped after epoch 1
    (out / "summary.json").unlink()
    os.replace(out / "checkpoint.prev.pt", out / "checkpoint.pt")
    run.write_metrics(run.read_metrics()[:1])
    summary = train(sequential_cnn(in_channels=1, classes=4), data, data, out=out, resume=True, **common)
    assert summary["epochs"] == 2 and "lr: 0.1\n" in (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"started with other options: lr \(0\.1 → 0\.001\)"):  # one given is compared
        (out / "summary.json").unlink()
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=out, resume=True, lr=0.001, **common)


def test_messages_of_a_run_from_python_name_its_keywords_not_command_line_flags(tmp_path, monkeypatch):
    """From Python the fix is train(..., resume=True) or overwrite=True: a command line would refuse the run
    (its batches come from Python), so a message that names `locallearn train --resume` sends the user astray."""
    from locallearn.training import interrupt, train

    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)] * 2
    common = dict(num_classes=4, method="greedy", num_modules=2, epochs=2, device="cpu", log=lambda line: None)
    out = tmp_path / "run"
    calls = []
    real = interrupt.check

    def ctrl_c_in_epoch_two():  # a stop requested once epoch 1 is checkpointed
        calls.append(1)
        if (out / "checkpoint.pt").exists():
            raise interrupt.Interrupted("interrupted")
        real()

    monkeypatch.setattr(interrupt, "check", ctrl_c_in_epoch_two)
    with pytest.raises(KeyboardInterrupt) as err:
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=out, **common)
    assert f"`train(model, train_data, test_data, out={str(out)!r}, resume=True)` continues it" in str(err.value)
    monkeypatch.setattr(interrupt, "check", real)
    with pytest.raises(ValueError) as err:
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=out, **common)
    assert str(err.value) == (f"{out} already holds an unfinished run (resume=True continues it); pass overwrite=True "
                              "to replace it, or choose another out=.")
    with pytest.raises(ValueError, match="^resume=True and overwrite=True exclude each other"):
        train(sequential_cnn(in_channels=1, classes=4), data, data, out=out, resume=True, overwrite=True, **common)


def test_batches_from_python_of_varying_number_get_no_note_of_changed_data(tmp_path):
    """An epoch's image count is compared only across a resume, and not for batches from Python, which may
    vary by design (the note named --data-dir, a flag such a run does not have)."""
    from locallearn.training import train

    batch = (torch.randn(4, 1, 16, 16), torch.arange(4) % 4)

    class Varying:
        calls = 0

        def __iter__(self):
            Varying.calls += 1
            return iter([batch] * (2 + Varying.calls % 2))

    lines = []
    train(sequential_cnn(in_channels=1, classes=4), Varying(), [batch], out=tmp_path / "run", num_classes=4,
          method="greedy", num_modules=2, epochs=3, device="cpu", log=lines.append)
    assert not any("training data has changed" in line for line in lines)


def test_a_resume_from_python_with_another_model_names_the_keyword_fix(tmp_path):
    from locallearn.training import train

    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)]
    common = dict(num_classes=4, method="greedy", num_modules=2, device="cpu", log=lambda line: None)
    train(sequential_cnn(in_channels=1, classes=4), data, data, out=tmp_path / "run", epochs=2, **common)
    (tmp_path / "run" / "summary.json").unlink()  # as if stopped before its end
    wider = sequential_cnn(in_channels=1, classes=4)
    wider[0][0] = nn.Conv2d(1, 16, 5, padding=2)  # another kernel: the checkpoint's weights do not fit
    with pytest.raises(ValueError, match="start over with overwrite=True") as err:
        train(wider, data, data, out=tmp_path / "run", epochs=2, resume=True, **common)
    assert "--overwrite" not in str(err.value)


def test_a_module_whose_every_parameter_is_frozen_runs_forward_only(tmp_path):
    """A frozen pretrained part cut into a module of its own (its last unit, here: no head of its own) has
    nothing to train: it runs forward, the other modules learn (it was PyTorch's 'element 0 of tensors does
    not require grad' in a traceback)."""
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)),
    )
    model[2].requires_grad_(False)  # the last module: the classifier unit alone, with no head of its own
    net = ll.build(model, method="greedy", num_modules=3, split="uniform", num_classes=4, image_size=16,
                   in_channels=1)
    assert net.bounds[-1] == (2, 3)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
    stats = ll.train_step(net, x, y, torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1))
    assert torch.isfinite(stats["loss/2"])
    changed = [not torch.equal(a, b) for a, b in zip(before, net.parameters())]
    frozen = [not p.requires_grad for p in net.parameters()]
    assert any(changed) and not any(c for c, f in zip(changed, frozen) if f)


def test_a_resume_from_python_with_both_checkpoints_damaged_names_the_keyword_fix(tmp_path):
    from locallearn.training import train

    data = [(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)]
    common = dict(num_classes=4, method="greedy", num_modules=2, device="cpu", log=lambda line: None, epochs=2)
    model = sequential_cnn(in_channels=1, classes=4)
    train(model, data, data, out=tmp_path / "run", **common)
    (tmp_path / "run" / "summary.json").unlink()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / "run" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="no sound checkpoint is left: start over with overwrite=True") as err:
        train(model, data, data, out=tmp_path / "run", resume=True, **common)
    assert "--overwrite" not in str(err.value)


def test_uint8_labels_train_as_train_step_takes_them(tmp_path):
    """train_step takes uint8 class indices (cross-entropy does); train() refused them at its first batch. The
    same batches with int64 or uint8 labels train the same network to the same results."""
    from locallearn.training import train

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 1, 16, 16, generator=g), torch.arange(16) % 4
    common = dict(num_classes=4, method="greedy", num_modules=2, epochs=2, batch_size=8, device="cpu", seed=0,
                  log=lambda line: None)
    results = []
    for kind, out in ((torch.int64, "a"), (torch.uint8, "b")):
        data = [(images[:8], labels[:8].to(kind)), (images[8:], labels[8:].to(kind))]
        torch.manual_seed(0)
        model = sequential_cnn(in_channels=1, classes=4)
        train(model, data, data, out=tmp_path / out, **common)
        results.append(([p.detach().clone() for p in model.parameters()],
                        {key: json.loads((tmp_path / out / "summary.json").read_text())[key] for key in ("test_acc", "test_loss")}))
    (weights_a, test_a), (weights_b, test_b) = results
    assert test_a == test_b and all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))


def test_building_leaves_every_submodule_in_the_mode_it_was_in():
    """The checks ll.units and ll.build run (an eval-mode forward through the units, and the model's own forward
    beside them) give each submodule its own mode back, not the top module's: a BatchNorm the user put in eval
    mode stays there, and the rest stays in training mode."""
    model = sequential_cnn()
    model[1][1].eval()
    ll.build(model, method="greedy", num_modules=2, image_size=16)
    nested = nn.Sequential()
    nested.add_module("body", sequential_cnn())
    nested.body[1][1].eval()
    ll.units(nested, ["body.0", "body.1", "body.2", "body.3", "body.4"])
    for net in (model, nested.body):
        assert [m.training for m in net.modules()].count(False) == 1 and not net[1][1].training


def test_a_model_ending_in_softmax_is_refused_and_one_ending_in_log_softmax_is_not():
    """Cross-entropy of probabilities (a final nn.Softmax) trains a network that barely learns, without a word;
    log-probabilities are what cross-entropy takes anyway."""
    model = sequential_cnn()
    model[4].append(nn.Softmax(dim=1))
    with pytest.raises(ValueError, match=r"^model: the last unit \(4, Sequential\) returns probabilities \(each row "
                                         r"sums to 1: a Softmax at the end\?\).*remove the final Softmax"):
        ll.build(model, method="greedy", num_modules=2, image_size=16)
    model[4][-1] = nn.LogSoftmax(dim=1)
    ll.build(model, method="greedy", num_modules=2, image_size=16)
