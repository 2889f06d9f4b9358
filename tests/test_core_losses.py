"""Local losses and λ schedules (docs/methods.md §4) against naive reference formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn.losses import (
    LAMBDA_TABLES,
    lambda_schedule,
    lookup_lambdas,
    reconstruction_bce,
    supervised_contrastive,
)


def naive_supcon(features, labels, tau):
    z = F.normalize(features, dim=1)
    n = len(labels)
    total = 0.0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue  # contributes 0 but counts in the mean
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        li = -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in positives) / len(positives)
        total += li
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supervised_contrastive_matches_per_anchor_loop(seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(12, 16, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2, 4, 4, 1])  # class 3 has a single anchor
    got = supervised_contrastive(feats, labels, temperature=0.07).item()
    assert got == pytest.approx(naive_supcon(feats, labels, 0.07), rel=1e-5)


def test_supervised_contrastive_without_positives_is_zero_not_nan():
    loss = supervised_contrastive(torch.randn(4, 8), torch.arange(4))
    assert loss.item() == 0.0


def test_reconstruction_bce():
    target = torch.rand(2, 3, 4, 4)
    pred = torch.rand(2, 3, 4, 4).clamp(0.01, 0.99)
    expected = -(target * pred.log() + (1 - target) * (1 - pred).log()).mean()
    assert reconstruction_bce(pred, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_lambda_schedule_is_linear_between_first_and_last():
    sched = lambda_schedule((5, 0.05, 0.2, 0.5), 16)
    assert len(sched) == 15
    assert sched[0] == pytest.approx((5, 0.05))
    assert sched[-1] == pytest.approx((0.2, 0.5))
    r = 7 / 14
    assert sched[7] == pytest.approx((5 * (1 - r) + 0.2 * r, 0.05 * (1 - r) + 0.5 * r))


def test_lambda_schedule_k2_uses_first_values():
    assert lambda_schedule((5, 1, 0, 0), 2) == [(5, 1)]


def test_lambda_lookup_tables_and_fallback():
    assert lookup_lambdas("resnet110", "stl10", 4, balanced=False)[0] == (20, 0.2, 5, 2)
    assert lookup_lambdas("resnet110", "svhn", 4, balanced=False)[0] == (5, 0, 0.5, 1)
    assert lookup_lambdas("resnet32", "cifar10", 4, balanced=True)[0] == (5, 0, 0, 0.1)
    # memory-balanced λ were published for CIFAR-10 only
    assert lookup_lambdas("resnet110", "stl10", 4, balanced=True)[0] == (20, 0.2, 5, 2)
    assert lookup_lambdas("resnet110", "stl10", 3, balanced=True)[1].startswith("default")
    lam, source = lookup_lambdas("resnet32", "svhn", 4, balanced=False)
    assert lam == LAMBDA_TABLES[("resnet32", "cifar10")][4] and source.startswith("default")
    lam, source = lookup_lambdas("resnet56", "cifar100", 3, balanced=False)
    assert lam == LAMBDA_TABLES[("resnet32", "cifar10")][4] and source.endswith("resnet32 / cifar10 K=4")
    # the same dataset's own table first: STL-10's λ are on another scale than CIFAR-10's
    lam, source = lookup_lambdas("resnet110", "stl10", 3, balanced=True)
    assert lam == (20, 0.2, 5, 2) and source.endswith("resnet110 / stl10 K=4")
    assert lookup_lambdas("resnet32", "cifar10", 2, balanced=False)[0] == (5, 1, 0, 0)


@pytest.mark.parametrize("model, dataset", [("resnet32", "cifar10"), ("resnet110", "stl10"), ("resnet110", "svhn"),
                                            ("resnet56", "cifar100"), ("object:Sequential", None)])
def test_no_lambda_lookup_leaves_a_local_module_without_a_loss(model, dataset):
    """A K = 2 entry's "last" values are never used at K = 2; a fallback at K = 3 once gave module 1 (0, 0)."""
    for K in range(2, 33):
        for balanced in (False, True):
            lambdas, source = lookup_lambdas(model, dataset, K, balanced=balanced)
            weights = lambda_schedule(lambdas, K)
            assert all(xx > 0 or xy > 0 for xx, xy in weights), (model, dataset, K, source, weights)


def test_given_lambdas_that_silence_a_module_are_refused():
    with pytest.raises(ValueError, match=r"lambdas: \[5, 1, 0, 0\] give local module 1 of 3 the weights \(0, 0\)"):
        ll.build("resnet32", method="infopro", dataset="cifar10", num_modules=3, lambdas=[5, 1, 0, 0])
    net = ll.build("resnet32", method="infopro", dataset="cifar10", num_modules=2, lambdas=[5, 1, 0, 0])
    assert net.lambda_schedule == [(5, 1)] and net.lambda_source == "config"


def test_every_published_lambda_row_is_present():
    assert LAMBDA_TABLES[("resnet32", "cifar10")] == {
        2: (5, 1, 0, 0), 4: (6, 0, 1, 2), 8: (5, 0, 0, 2), 16: (5, 0.05, 0.2, 0.5)
    }
    assert LAMBDA_TABLES[("resnet110", "cifar10")][16] == (5, 0, 0.5, 1)
    assert LAMBDA_TABLES[("resnet110", "stl10")][16] == (20, 0.5, 10, 0.1)
    assert LAMBDA_TABLES[("resnet110", "svhn")][2] == (1, 0.1, 0, 0)
