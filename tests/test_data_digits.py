"""The bundled digits dataset: sizes, the fixed stratified split, value range and the spec statistics."""

from __future__ import annotations

import torch

from locallearn.data import get_spec, load_split
from locallearn.data.digits import DIGITS_TEST_PER_CLASS, _digits


def test_shapes_split_and_labels():
    x, y = load_split("digits", "ignored/root", train=True)
    xt, yt = load_split("digits", "ignored/root", train=False)
    assert x.shape == (1437, 3, 32, 32) and xt.shape == (360, 3, 32, 32)
    assert x.dtype == xt.dtype == torch.uint8 and y.dtype == yt.dtype == torch.int64
    assert torch.equal(torch.bincount(yt), torch.full((10,), DIGITS_TEST_PER_CLASS))
    assert torch.bincount(y).min() >= 130  # every class well represented in train
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey: three equal channels
    assert x.max() == 255 and x.min() == 0


def test_split_is_fixed_and_disjoint():
    _, _, is_test = _digits()
    assert int(is_test.sum()) == 360
    # The split must never change between runs or versions: pin a few test indices and a checksum.
    index = torch.nonzero(is_test).flatten()
    assert index[:5].tolist() == PINNED_FIRST_TEST and int(index.sum()) == PINNED_SUM
    x1, y1 = load_split("digits", "", train=True)
    x2, y2 = load_split("digits", "", train=True)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_spec_statistics_are_those_of_the_training_split():
    x, _ = load_split("digits", "", train=True)
    x01 = x.double() / 255
    spec = get_spec("digits")
    assert abs(x01.mean().item() - spec.mean[0]) < 1e-3
    assert abs(x01.std().item() - spec.std[0]) < 1e-3


PINNED_FIRST_TEST = [3, 7, 13, 19, 36]
PINNED_SUM = 312284
