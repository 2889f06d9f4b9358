"""The learning-rate schedule: a linear warm-up into a cosine decay (docs/methods.md §7), stepped once per
epoch (the papers' recipe) or at every training step (the usual transformer recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_lr(t: float, total: float, *, lr: float, warmup: float = 0.0, warmup_lr: float = 0.01) -> float:
    """The rate after ``t`` of ``total`` units (epochs or steps) have passed, ``warmup`` of them warming up.

    c(t) = ½·lr·(1 + cos(π·t/T)); during the warm-up (t < W) it blends linearly from ``warmup_lr`` into c:
    c(t)·t/W + warmup_lr·(W − t)/W. At t = 0 that is ``warmup_lr`` (or ``lr`` without a warm-up)."""
    rate = 0.5 * lr * (1 + math.cos(math.pi * t / total))
    if t < warmup:
        rate = rate * t / warmup + warmup_lr * (warmup - t) / warmup
    return rate


def epoch_lr(epoch: int, *, lr: float, epochs: int, warmup_epochs: int = 10, warmup_lr: float = 0.01) -> float:
    """The learning rate of epoch ``epoch`` (1-based).

    docs/methods.md §7: c(e) = ½·lr·(1 + cos(π·e/E)); for e ≤ 10, lr_e = c(e)·(e−1)/10 + 0.01·(11−e)/10,
    else c(e). Read literally, the last epoch trains at c(E) = 0, a defect of the reference scripts
    (docs/methods.md §9). **Fix (our choice):** epoch e uses the cosine at the *start* of the epoch, c(e−1) —
    e − 1 epochs done, as torch's CosineAnnealingLR — so epoch 1 starts at the peak and epoch E trains at
    ½·lr·(1 − cos(π/E)) > 0. Everything else is unchanged: W = ``warmup_epochs`` (10) warm-up epochs blend
    linearly from ``warmup_lr`` (0.01) into the cosine. A warm-up needs room: with E ≤ W there is none,
    and the run is pure cosine from the peak (short smoke and demo runs).
    """
    warmup = warmup_epochs if epochs > warmup_epochs else 0
    return cosine_lr(epoch - 1, epochs, lr=lr, warmup=warmup, warmup_lr=warmup_lr)


def lr_schedule(*, lr: float, epochs: int, warmup_epochs: int = 10, warmup_lr: float = 0.01) -> list[float]:
    """The learning rate of each epoch e = 1..E (list index e − 1): ``epoch_lr``."""
    return [epoch_lr(e, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr) for e in range(1, epochs + 1)]


@dataclass(frozen=True)
class Schedule:
    """A run's schedule: ``at(epoch, step)`` is the rate of training step ``step`` (0-based) of ``epoch``.

    ``per_step=False``: every step of an epoch trains at ``epoch_lr``. ``per_step=True``: the same warm-up and
    cosine over steps instead of epochs — t = (e − 1)·S + i of T = E·S, W·S warm-up steps — so the rate
    moves at every step; its value at an epoch's first step is ``epoch_lr``'s."""

    lr: float
    epochs: int
    warmup_epochs: int = 10
    warmup_lr: float = 0.01
    per_step: bool = False
    steps_per_epoch: int = 1

    def epoch(self, epoch: int) -> float:
        """The rate at the start of ``epoch`` (what a run's metrics record)."""
        return epoch_lr(epoch, lr=self.lr, epochs=self.epochs, warmup_epochs=self.warmup_epochs, warmup_lr=self.warmup_lr)

    def at(self, epoch: int, step: int) -> float:
        if not self.per_step:
            return self.epoch(epoch)
        s = self.steps_per_epoch
        warmup = self.warmup_epochs * s if self.epochs > self.warmup_epochs else 0
        return cosine_lr((epoch - 1) * s + step, self.epochs * s, lr=self.lr, warmup=warmup, warmup_lr=self.warmup_lr)
