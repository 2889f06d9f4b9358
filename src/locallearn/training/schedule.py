"""The learning-rate schedule of the papers' recipes (docs/methods.md §7): warm-up, then cosine decay."""

from __future__ import annotations

import math


def lr_schedule(*, lr: float, epochs: int, warmup_epochs: int = 10, warmup_lr: float = 0.01) -> list[float]:
    """The learning rate of each epoch e = 1..E (list index e − 1).

    docs/methods.md §7: c(e) = ½·lr·(1 + cos(π·e/E)); for e ≤ 10, lr_e = c(e)·(e−1)/10 + 0.01·(11−e)/10,
    else c(e).
    Read literally, the last epoch trains at c(E) = 0, a defect of the reference scripts (docs/methods.md §9).
    **Fix (our choice):** epoch e uses the cosine at the *start* of the epoch, c(e−1) — e − 1 epochs done,
    as torch's CosineAnnealingLR — so epoch 1 starts at the peak and epoch E trains at
    ½·lr·(1 − cos(π/E)) > 0. Everything else is unchanged: W = ``warmup_epochs`` (10) warm-up epochs blend
    linearly from ``warmup_lr`` (0.01) into the cosine. A warm-up needs room: with E ≤ W there is none,
    and the run is pure cosine from the peak (short smoke and demo runs).
    """
    return [epoch_lr(e, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr) for e in range(1, epochs + 1)]


def epoch_lr(epoch: int, *, lr: float, epochs: int, warmup_epochs: int = 10, warmup_lr: float = 0.01) -> float:
    """The learning rate of epoch ``epoch`` (1-based) of ``lr_schedule``, computed on its own: a run stores
    its options, not its schedule."""
    warmup = warmup_epochs if epochs > warmup_epochs else 0
    rate = 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    if epoch <= warmup:
        rate = rate * (epoch - 1) / warmup + warmup_lr * (warmup + 1 - epoch) / warmup
    return rate
