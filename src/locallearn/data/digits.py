"""The bundled dataset: scikit-learn's handwritten digits (the UCI optical-digits test set), 1,797 8×8
greyscale images of the digits 0-9, presented like the paper datasets as 3×32×32 uint8 images.

The split is fixed: 36 test images per class (360 test, 1,437 train), drawn per class with NumPy's legacy
`RandomState(0)`, whose stream NumPy guarantees never to change, so the split is the same on every
machine and version. Train and test images keep the original file order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_SIZE = 32
DIGITS_TEST_PER_CLASS = 36
DIGITS_SPLIT_SEED = 0
_DIGITS_MAX = 16.0  # pixel values in scikit-learn's array are counts 0..16 (of a 4×4 block of 32×32 bits)


def load_digits_split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,); N = 1,437 (train) or 360 (test)."""
    images, labels, is_test = _digits()
    keep = ~is_test if train else is_test
    return images[keep].clone(), labels[keep].clone()


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = torch.from_numpy(bunch.images / _DIGITS_MAX).float().unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    # Bilinear rather than nearest: nearest turns every source pixel into a 4×4 block whose edges all sit
    # on one fixed 4-pixel grid, an artefact natural images do not have and that the stride-2 stages of a
    # ResNet line up with; bilinear gives smooth strokes. It is a convex combination, so values stay in
    # [0, 1].
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()  # (N, 3, 32, 32)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images, labels, torch.from_numpy(_test_mask(bunch.target))


def _test_mask(target: np.ndarray) -> np.ndarray:
    """Stratified split: DIGITS_TEST_PER_CLASS random images of every class go to test."""
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    is_test = np.zeros(len(target), dtype=bool)
    for c in np.unique(target):
        members = np.flatnonzero(target == c)
        is_test[rng.permutation(members)[:DIGITS_TEST_PER_CLASS]] = True
    return is_test
