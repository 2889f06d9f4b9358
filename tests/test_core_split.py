"""Splits (METHODS.md 2.2): paper and balanced tables, uniform, auto, explicit cuts and their errors."""

import itertools

import pytest

import locallearn as ll
from locallearn import split as sp
from locallearn.models import create_model


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
    assert largest(sp.balanced_ends(costs, ends_cost[:-1] + [0.0], K)) == best


def test_auto_split_is_no_worse_than_the_papers_table():
    """The measured objective of `auto` (largest module's activation bytes incl. its head) is at most the
    hand-made table's under the same cost model."""
    from locallearn.bench.meters import unit_activation_bytes

    backbone = create_model("resnet110", num_classes=10)
    unit_bytes = unit_activation_bytes(backbone, 32)
    table = ll.build("resnet110", method="contsup", context="R0", num_modules=4, split="balanced", dataset="cifar10")
    auto = ll.build("resnet110", method="contsup", context="R0", num_modules=4, split="auto", dataset="cifar10")

    def largest_units(net):
        return max(sum(unit_bytes[a:b]) for a, b in net.bounds)

    assert largest_units(auto) <= largest_units(table) * 1.02


def test_uniform_split():
    assert sp.uniform_ends(17, 4) == [4, 8, 12]
    net = ll.build("resnet32", method="greedy", num_modules=4, split="uniform")
    assert [b - a for a, b in net.bounds] == [5, 4, 4, 4]


def test_explicit_cuts():
    net = ll.build("resnet32", method="greedy", num_modules=3, split=[[1, 2], [3, 0]])
    assert net.cuts == [(1, 2), (3, 0)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_modules=3, split=[[1, 7], [3, 0]]), "out of range"),
        (dict(num_modules=3, split=[[3, 0], [1, 2]]), "strictly increasing"),
        (dict(num_modules=3, split=[[1, 2], [1, 2]]), "strictly increasing"),
        (dict(num_modules=3, split=[[4, 0], [1, 2]]), "out of range"),
        (dict(num_modules=4, split=[[1, 2], [3, 0]]), "give 3 cuts"),
        (dict(num_modules=3, split=["a", "b"]), "pair"),
        (dict(num_modules=18), "larger than the backbone's 17 units"),
        (dict(num_modules=5, split="paper"), "defined for num_modules in"),
        (dict(num_modules=4, split="halves"), "valid splits are"),
        (dict(num_modules=0), "positive integer"),
    ],
)
def test_bad_splits_are_refused_with_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        ll.build("resnet32", method="greedy", **kwargs)
    assert "\n" not in str(err.value)


def test_k_equal_to_units_is_allowed():
    net = ll.build("resnet20", method="greedy", num_modules=11, split="uniform")
    assert [b - a for a, b in net.bounds] == [1] * 11
