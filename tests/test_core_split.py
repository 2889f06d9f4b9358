"""Splits (docs/methods.md §2.2): paper and balanced tables, uniform, auto, explicit cuts and their errors."""

import itertools

import pytest
import torch

import locallearn as ll
from locallearn import split as sp
from locallearn.config import resolve_net
from locallearn.memory import StepMemoryMeter
from locallearn.split.auto import balanced_ends, split_costs

TINY_SWIN = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=2, drop_path_rate=0.1)


@pytest.mark.parametrize("model", ["resnet32", "resnet110"])
@pytest.mark.parametrize("K", [2, 4, 8, 16])
def test_paper_split_tables(model, K):
    net = ll.build(model, method="greedy", num_modules=K, split="paper", dataset="cifar10")
    assert net.cuts == sp.PAPER_SPLITS[model][K]
    assert net.num_modules == K
    assert sum(b - a for a, b in net.bounds) == net.backbone.num_units


def test_resnet32_k16_table_spelled_out():
    cuts = sp.PAPER_SPLITS["resnet32"][16]
    assert cuts[0] == (0, 0) and len(cuts) == 15
    assert cuts[1:11] == [(1, b) for b in range(5)] + [(2, b) for b in range(5)]
    assert cuts[11:] == [(3, 0), (3, 1), (3, 2), (3, 3)]


@pytest.mark.parametrize(
    "model, dataset, K, cuts",
    [
        ("resnet110", "cifar10", 3, [(1, 9), (2, 2)]),
        ("resnet110", "stl10", 3, [(1, 8), (2, 1)]),
        ("resnet110", "cifar10", 4, [(1, 6), (1, 14), (2, 8)]),
        ("resnet32", "cifar10", 8, [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)]),
    ],
)
def test_balanced_tables(model, dataset, K, cuts):
    net = ll.build(model, method="contsup", context="R0", num_modules=K, split="balanced", dataset=dataset)
    assert net.cuts == cuts


def test_balanced_falls_back_to_auto_without_table():
    net = ll.build("resnet56", method="greedy", num_modules=3, split="balanced", dataset="cifar10")
    auto = ll.build("resnet56", method="greedy", num_modules=3, split="auto", dataset="cifar10")
    assert net.cuts == auto.cuts


def test_memory_balanced_lambdas_only_with_the_memory_balanced_cuts():
    """ResNet-32 / CIFAR-10 has balanced λ at K = 3 but no balanced cuts: the computed split gets the usual λ."""
    options = dict(method="infopro", split="balanced", dataset="cifar10")
    tabled = ll.build("resnet32", num_modules=4, **options)
    assert tabled.cuts == sp.BALANCED_SPLITS[("resnet32", 32)][4]
    assert tabled.lambda_source == "table: resnet32 memory-balanced K=4"
    computed = ll.build("resnet32", num_modules=3, **options)
    assert computed.cuts == ll.build("resnet32", num_modules=3, **{**options, "split": "auto"}).cuts
    assert "memory-balanced" not in computed.lambda_source and computed.lambda_source.startswith("default")


@pytest.mark.parametrize(
    "model, options",
    [
        ("resnet20", dict(method="infopro", dataset="cifar10", context="R0")),
        ("resnet20", dict(method="contsup", context="R2E")),
        ("swin_cifar", dict(method="featrecon", image_size=32, model_kwargs=TINY_SWIN)),
    ],
)
@pytest.mark.parametrize("split", ["auto", "balanced"])
def test_computed_split_initialises_as_the_same_cuts_given_explicitly(model, options, split):
    """Measuring the cost model must not move the global RNG the heads, decoders and encoders draw from."""

    def build(split):
        torch.manual_seed(0)
        return ll.build(model, num_modules=3, split=split, **options)

    computed = build(split)
    explicit = build([list(c) for c in computed.cuts])
    a, b = computed.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_balanced_ends_is_optimal_against_brute_force():
    costs = [9.0, 1.0, 4.0, 4.0, 2.0, 7.0, 1.0, 3.0]
    ends_cost = [1.0, 0.5, 2.0, 0.0, 1.5, 0.5, 1.0, 0.0]
    n, K = len(costs), 4

    def largest(ends):
        bounds = [0] + [e + 1 for e in ends] + [n]
        return max(
            sum(costs[a:b]) + (ends_cost[b - 1] if b < n else 0.0) for a, b in zip(bounds[:-1], bounds[1:])
        )

    best = min(largest(list(c)) for c in itertools.combinations(range(n - 1), K - 1))
    assert largest(balanced_ends(costs, ends_cost[:-1] + [0.0], K)) == best


def test_balanced_ends_with_start_costs_is_optimal_against_brute_force():
    """The start cost of a boundary may depend on the previous boundary (ContSup's ResEnc reads it)."""
    costs = [9.0, 1.0, 4.0, 4.0, 2.0, 7.0, 1.0, 3.0, 2.0]
    ends_cost = [1.0, 0.5, 2.0, 0.0, 1.5, 0.5, 1.0, 0.0, 0.0]
    n = len(costs)

    def start(b, e, p):  # boundary b after unit e, the previous one after unit p (−1: none)
        return 0.5 * e + (3.0 if p == -1 else 6.0 / (1 + e - p)) + b

    def largest(ends):
        bounds = [0] + [e + 1 for e in ends] + [n]
        out = []
        for m, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            c = sum(costs[a:b]) + ends_cost[b - 1]
            if m > 0:
                c += start(m - 1, a - 1, bounds[m - 1] - 1)
            out.append(c)
        return max(out)

    for K in (2, 3, 4, 5):
        best = min(largest(list(c)) for c in itertools.combinations(range(n - 1), K - 1))
        assert largest(balanced_ends(costs, ends_cost, K, start_bytes=start)) == pytest.approx(best)


def _step_peaks(net, batch=2):
    """StepMemoryMeter over one training step (after one warm-up step): (peak, module peaks), bytes."""
    size = net.config.image_size or net.backbone.image_size
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    ll.train_step(net, x, y, opt)
    opt.zero_grad(set_to_none=True)
    with StepMemoryMeter(net, x) as meter:
        ll.train_step(net, x, y, opt)
    return meter.peak_bytes, meter.module_peaks


@pytest.mark.parametrize(
    "model, options",
    [
        ("resnet32", dict(method="contsup", context="R0")),
        ("resnet32", dict(method="contsup", context="R1E")),
        ("resnet110", dict(method="infopro", image_size=32)),
    ],
    ids=["resnet32-R0", "resnet32-R1E", "resnet110-infopro"],
)
def test_auto_split_holds_at_most_the_papers_table(model, options):
    """What the benchmark measures (StepMemoryMeter's peak) is no larger for `auto` than for the papers'
    memory-balanced table at K = 4."""
    table = ll.build(model, num_modules=4, split="balanced", **options)
    auto = ll.build(model, num_modules=4, split="auto", **options)
    assert table.cuts == sp.BALANCED_SPLITS[(model, 32)][4]
    assert _step_peaks(auto)[0] <= _step_peaks(table)[0]


@pytest.mark.parametrize(
    "model, options",
    [
        ("resnet32", dict(method="contsup", context="R1E", num_modules=8, split="auto")),
        ("resnet32", dict(method="contsup", context="R1", num_modules=4, split="balanced")),
        ("resnet32", dict(method="infopro", num_modules=3, split="uniform", image_size=32)),
        ("swin_cifar", dict(method="featrecon", num_modules=3, split="auto", feature_decoder="conv",
                            model_kwargs=dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                                              window_size=2, drop_path_rate=0.0))),
    ],
    ids=["resnet32-R1E-auto", "resnet32-R1-table", "resnet32-infopro", "swin-featrecon"],
)
def test_cost_model_predicts_the_measured_module_peaks(model, options):
    """split_cost's module costs are StepMemoryMeter's module peaks, less the input image the step holds
    throughout (a constant the model leaves out), to within BatchNorm statistics and loss scalars."""
    net = ll.build(model, **options)
    batch = 2
    _, peaks = _step_peaks(net, batch)
    size = net.config.image_size or net.backbone.image_size
    measured = [p / batch - 3 * size * size * 4 for p in peaks]
    predicted = split_costs(net.config, net.backbone).module_costs(net.bounds)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_uniform_split():
    assert sp.uniform_ends(17, 4) == [4, 8, 12]
    net = ll.build("resnet32", method="greedy", num_modules=4, split="uniform")
    assert [b - a for a, b in net.bounds] == [5, 4, 4, 4]


def test_explicit_cuts():
    net = ll.build("resnet32", method="greedy", num_modules=3, split=[[1, 2], [3, 0]])
    assert net.cuts == [(1, 2), (3, 0)]
    # without num_modules, the cuts say K (greedy's default K = 4 would contradict them)
    assert ll.build("resnet32", method="greedy", split=[[1, 2], [3, 0]]).num_modules == 3


@pytest.mark.parametrize("split", ["auto", "uniform", "balanced"])
def test_a_computed_split_describes_itself_in_plain_ints(split):
    described = ll.build("resnet32", method="greedy", num_modules=4, split=split).describe()
    assert all(type(n) is int for n in described["units_per_module"])  # not NumPy's, which json.dumps refuses


def test_the_default_split_is_the_papers_where_it_has_cuts_for_this_k_else_computed():
    assert resolve_net("resnet32", "contsup", num_modules=4).split == "paper"
    assert resolve_net("resnet32", "contsup", num_modules=3).split == "auto"  # no published cuts for K = 3
    assert ll.build("resnet32", method="contsup", num_modules=3).cuts == [(1, 3), (2, 3)]
    assert resolve_net("resnet32", "e2e").split == "paper"  # one module: no cut, as before
    assert [resolve_net("swin_tiny", "greedy", num_modules=k).split for k in (2, 3, 4)] == ["paper", "auto", "paper"]
    # a wrong K or empty cuts are still refused in one line by their checks
    with pytest.raises(ValueError, match=r"num_modules must be an integer >= 1, got '3'"):
        resolve_net("resnet32", "contsup", num_modules="3")
    assert resolve_net("resnet32", "greedy", split=[]).num_modules == 4  # no cut says no K
    with pytest.raises(ValueError, match=r"model_kwargs: expected a mapping of backbone arguments, got \[1\]"):
        resolve_net("swin_cifar", "infopro", num_modules=3, model_kwargs=[1])  # not an AttributeError
    with pytest.raises(ValueError, match="paper split of resnet32 is defined for num_modules in"):
        ll.build("resnet32", method="contsup", num_modules=3, split="paper")  # asked for: refused, not replaced


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_modules=3, split=[[1, 7], [3, 0]]), "out of range"),
        (dict(num_modules=3, split=[[3, 0], [1, 2]]), "strictly increasing"),
        (dict(num_modules=3, split=[[1, 2], [1, 2]]), "strictly increasing"),
        (dict(num_modules=3, split=[[4, 0], [1, 2]]), "is the last unit, the classifier"),
        (dict(num_modules=4, split=[[1, 2], [3, 0]]), "give 3 cuts"),
        (dict(num_modules=3, split=["a", "b"]), "pair"),
        (dict(num_modules=18), "larger than the backbone's 17 units"),
        (dict(num_modules=5, split="paper"), "defined for num_modules in"),
        (dict(num_modules=4, split="stages"), r"resnet32 defines no stages split; its splits are paper, balanced, "
                                              r"auto, uniform or explicit cuts\.$"),
        (dict(num_modules=4, split="halves"), "valid splits are"),
        (dict(num_modules=3, split="0,1"), r"or a YAML list of cuts: \[\[stage, block\], \.\.\.\] for the built-in "
                                           r"backbones, \[0, 2\] \(unit indices or names\) for a model of your own\.$"),
        (dict(num_modules=0), "num_modules must be an integer >= 1"),
    ],
)
def test_bad_splits_are_refused_with_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        ll.build("resnet32", method="greedy", **kwargs)
    assert "\n" not in str(err.value)


def test_k_equal_to_units_is_allowed():
    net = ll.build("resnet20", method="greedy", num_modules=11, split="uniform")
    assert [b - a for a, b in net.bounds] == [1] * 11


def test_a_registered_backbones_own_paper_split_is_its_default_read_from_named_splits(monkeypatch):
    """A registered model gets the `paper` split by default where its backbone's named_splits("paper") gives cuts
    for K (read from the backbone built on the meta device; nothing to declare twice at registration), else
    the computed `auto`; a user's factory (an import path) is not run for it."""
    from torch import nn

    from locallearn.config import _OWN_PAPER_KS, default_split
    from locallearn.models import MODELS, Backbone, register_model

    class Tiny(Backbone):
        def __init__(self, num_classes=10, image_size=8):
            super().__init__()
            self.units = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                                        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))])
            self.unit_keys, self.image_size = [(1, 0), (1, 1), (2, 0)], image_size

        def named_splits(self, name):
            return {2: [(1, 1)]} if name == "paper" else {}

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # registered for this test only
    monkeypatch.setattr("locallearn.config._OWN_PAPER_KS", dict(_OWN_PAPER_KS))
    register_model("tiny_with_paper", Tiny)
    assert [default_split("tiny_with_paper", k) for k in (2, 3, None)] == ["paper", "auto", "paper"]
    net = ll.build("tiny_with_paper", method="greedy", num_modules=2, image_size=8)
    assert net.config.split == "paper" and net.bounds == [(0, 2), (2, 3)]
    assert default_split("no_such_package.module:factory", 2) == "auto"
