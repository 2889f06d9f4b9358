"""Extending the library as docs/architecture.md says: a method of one's own and a backbone of one's own are
checked against their contracts, and a mistake in either is one line naming it (not a traceback from deep in
the split cost model or the engine); a method written to the contract trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import locallearn as ll
from locallearn.methods import METHODS, LocalObjective, Method, register_method
from locallearn.models import Backbone


class Penalised(LocalObjective):
    """The shared objective plus a small L2 penalty on the hand-off (a method of one's own)."""

    def __init__(self, inner: LocalObjective, weight: float = 1e-3) -> None:
        super().__init__()
        self.inner, self.weight = inner, weight
        self.taps = inner.taps

    def forward(self, h, inputs, state):
        loss, metrics = self.inner(h, inputs, state)
        return loss + self.weight * h.pow(2).mean(), metrics


class Custom(Method):
    """A method whose objectives the test chooses: ``make(shared objectives) → what build_objectives returns``."""

    def __init__(self, name, make) -> None:
        super().__init__(name, defaults=dict(aux_head="linear", local_loss="ce", context="R0", reconstruct=False),
                         description="a test method")
        self.make = make

    def build_objectives(self, config, boundaries):
        return self.make(super().build_objectives(config, boundaries))


@pytest.fixture
def method(monkeypatch):
    """Registers a Custom method for the test only."""
    def add(name, make):
        monkeypatch.setitem(METHODS._entries, name, Custom(name, make))
        return name
    return add


def test_a_method_of_ones_own_trains_through_build_and_the_engine(method):
    name = method("penalised", lambda shared: [Penalised(o) for o in shared])
    for split in ("uniform", "auto"):  # auto: the split cost model builds and runs the objectives too
        net = ll.build("resnet20", method=name, num_modules=3, split=split)
        stats = ll.train_step(net, torch.randn(4, 3, 32, 32), torch.arange(4) % 10,
                              torch.optim.SGD(net.parameters(), lr=0.01))
        assert all(torch.isfinite(v) for v in stats.values())


class OwnMetrics(LocalObjective):
    """Metrics of its own, not detached, and a ``loss`` among them that is not the loss it returns."""

    def forward(self, h, inputs, state):
        loss = h.float().pow(2).mean()
        return loss, {"energy": loss, "loss": torch.tensor(123.0)}


def test_the_loss_logged_and_checked_is_the_one_back_propagated_and_metrics_are_detached(method):
    name = method("energy", lambda shared: [OwnMetrics() for _ in shared])
    net = ll.build("resnet20", method=name, num_modules=2, split="uniform")
    stats = ll.train_step(net, torch.randn(4, 3, 32, 32), torch.arange(4), torch.optim.SGD(net.parameters(), lr=0.01))
    assert torch.equal(stats["loss/0"], stats["energy/0"]) and stats["loss/0"] != 123.0
    assert not any(value.requires_grad for value in stats.values())


class ReturnsTensor(LocalObjective):
    def forward(self, h, inputs, state):
        return h.mean()


class NonScalar(LocalObjective):
    def forward(self, h, inputs, state):
        return h.mean(dim=(1, 2, 3)), {}


class FloatMetrics(LocalObjective):
    def forward(self, h, inputs, state):
        return h.mean(), {"loss": 0.5}


COUNT = r"build_objectives must return one local objective per boundary \(\d\), got "  # auto prices one at a time


@pytest.mark.parametrize("make, words", [
    (lambda shared: shared[:-1], COUNT + r"[01];"),
    (lambda shared: tuple(shared) + (shared[0],), COUNT + r"[23];"),
    (lambda shared: shared[0], COUNT + r"a SupervisedObjective;"),
    (lambda shared: [lambda h, x, s: (h.mean(), {})] * len(shared), "objective 0 is a function, not a LocalObjective"),
    (lambda shared: [nn.Identity() for _ in shared], "objective 0 is a Identity, not a LocalObjective"),
])
@pytest.mark.parametrize("split", ["uniform", "auto"])
def test_what_build_objectives_returns_is_checked_in_one_line(method, make, words, split):
    name = method("broken", make)
    with pytest.raises(ValueError, match=rf"^method broken: {words}") as err:
        ll.build("resnet20", method=name, num_modules=3, split=split)
    assert "see docs/architecture.md, adding a method." in str(err.value) and "\n" not in str(err.value)


def test_a_tap_of_a_unit_the_backbone_lacks_is_refused(method):
    def tap_beyond(shared):
        shared[0].taps = (99,)
        return shared
    name = method("tapper", tap_beyond)
    with pytest.raises(ValueError, match=r"^method tapper: objective 0 taps unit 99, but the backbone's units are "
                                         r"0\.\.10; see docs/architecture\.md"):
        ll.build("resnet20", method=name, num_modules=2, split="uniform")


@pytest.mark.parametrize("objective, words", [
    (ReturnsTensor, r"got a Tensor \(\)"),
    (NonScalar, r"got \(Tensor \(4,\), dict of nothing\)"),
    (FloatMetrics, r"got \(Tensor \(\), dict of float\)"),
])
def test_what_an_objective_returns_is_checked_in_one_line(method, objective, words):
    name = method("odd", lambda shared: [objective() for _ in shared])
    net = ll.build("resnet20", method=name, num_modules=2, split="uniform")
    with pytest.raises(ValueError, match=rf"^method odd: objective 0 must return \(loss, metrics\), a 0-d loss tensor "
                                         rf"and a dict of tensors, {words}; see docs/architecture\.md"):
        ll.train_step(net, torch.randn(4, 3, 32, 32), torch.arange(4), torch.optim.SGD(net.parameters(), lr=0.01))


class DetachedHead(LocalObjective):
    """A loss of its own parameters on h.detach(): it trains its head, never the module's units."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, h, inputs, state):
        return (self.scale * h.detach().mean()).pow(2), {}


def test_a_loss_that_does_not_reach_the_modules_output_is_refused_in_one_line(method):
    name = method("detached", lambda shared: [DetachedHead() for _ in shared])
    net = ll.build("resnet20", method=name, num_modules=2, split="uniform")
    with pytest.raises(ValueError, match=r"^method detached: objective 0's loss does not depend on the module's output "
                                         r"h \(was it computed from h\.detach\(\)\?\), so module 0's units would never "
                                         r"learn; compute it from h; see docs/architecture\.md") as err:
        ll.train_step(net, torch.randn(4, 3, 32, 32), torch.arange(4), torch.optim.SGD(net.parameters(), lr=0.01))
    assert "\n" not in str(err.value)


def test_only_a_method_is_registered_as_one():
    with pytest.raises(TypeError, match=r"^register_method takes a Method .* got dict"):
        register_method({"name": "x"})


def test_a_misspelt_default_or_family_of_a_method_is_named_in_one_line(monkeypatch):
    cases = [
        (dict(defaults=dict(aux_haed="linear")),
         r"^method typo: its defaults set 'aux_haed', which is not an option of the network; the options are "
         r"NetConfig's fields: model, method, "),
        (dict(defaults=dict(aux_head="linear"), family_defaults={"transformer": {"head": "token"}}),
         r"^method typo: its family_defaults\['transformer'\] set 'head'"),
        (dict(defaults=dict(aux_head="linear"), family_defaults={"transfomer": {}}),
         r"^method typo: family_defaults names family 'transfomer'; the model families are cnn, transformer\.$"),
    ]
    for kwargs, words in cases:
        monkeypatch.setitem(METHODS._entries, "typo", Method("typo", description="", **kwargs))
        with pytest.raises(ValueError, match=words):
            ll.build("resnet20", method="typo", num_modules=2)


class Small(Backbone):
    """A backbone of one's own; ``mode`` breaks one part of the contract."""

    def __init__(self, mode: str = "ok") -> None:
        super().__init__()
        self.image_size = 16
        units = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                 nn.Sequential(nn.Conv2d(16 if mode == "no chain" else 8, 8, 3, padding=1), nn.ReLU()),
                 nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))]
        self.units = units if mode == "a list" else nn.ModuleList(units[2:] if mode == "one unit" else units)
        if mode != "no keys":
            self.unit_keys = [0, 1] if mode == "a key short" else list(range(len(self.units)))
        if mode == "no size":
            self.image_size = None


@pytest.mark.parametrize("mode, words", [
    ("no chain", r"model: unit 1 \(Sequential\) cannot take the output of unit 0 \(Sequential\), of shape \(8, 16, 16\)"),
    ("a list", r"model: Small\.units must be an nn\.ModuleList of at least 2 units \(features, then a classifier\), "
               r"got list"),
    ("one unit", r"model: Small\.units must be an nn\.ModuleList of at least 2 units"),
    ("no keys", r"model: Small\.unit_keys must name each of its 3 units \(how cuts name them\), got none"),
    ("a key short", r"model: Small\.unit_keys must name each of its 3 units \(how cuts name them\), got 2"),
    ("no size", r"model: Small\.image_size must be the input size the backbone is built for \(an int\), got None"),
])
def test_a_backbone_of_ones_own_is_checked_against_its_contract_in_one_line(mode, words):
    with pytest.raises(ValueError, match=rf"^{words}") as err:
        ll.build(Small(mode), method="greedy", num_modules=2)
    assert "\n" not in str(err.value)
    net = ll.build(Small(), method="contsup", num_modules=2, context="R1")
    assert net.num_modules == 2 and len(net.cuts) == 1
