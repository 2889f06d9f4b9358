"""Local losses and the λ schedules that weigh them (docs/methods.md §4).

Losses are pure functions. A module k < K with image reconstruction is trained on
``λ_xx(k)·L_rec + λ_xy(k)·L_task``; without reconstruction on ``L_task`` alone, and then no λ table is
consulted (the reference scripts looked it up anyway and crashed on unknown datasets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from locallearn.registry import Registry


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2 "L_out"), one view per sample.

    z = L2-normalised features; for anchor i with positives P(i) = {p ≠ i : y_p = y_i}:
    L_i = −1/|P(i)| Σ_p log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) ).
    An anchor without a positive contributes 0 and still counts in the mean over the batch, as in the
    InfoPro reference (so small batches with singleton classes give a smaller loss, never NaN).
    """
    z = F.normalize(at_least_float32(features), dim=1)  # (B, D); float64 stays float64
    logits = z @ z.T / temperature  # (B, B)
    n = logits.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # a ≠ i in the denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask  # (B, B)
    pos_count = positives.sum(dim=1)
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    per_anchor = -pos_log_prob / pos_count.clamp(min=1)
    return per_anchor.mean()


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is in a narrower type (bfloat16, float16 under autocast), else as it is (a
    float64 network keeps float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def reconstruction_bce(reconstruction: torch.Tensor, image01: torch.Tensor) -> torch.Tensor:
    """InfoPro's image reconstruction loss: BCE against the un-normalised image in [0, 1].

    A diverged network's NaN reconstruction, which BCE refuses (inputs outside [0, 1]), gives a NaN loss
    instead, for the trainer's non-finite check to stop on with its one-line message. (On CUDA, BCE's check
    is a device assert that cannot be caught.)"""
    # BCE is not autocast-safe; compute it in (at least) float32.
    reconstruction = at_least_float32(reconstruction)
    try:
        return F.binary_cross_entropy(reconstruction, at_least_float32(image01))
    except RuntimeError as err:
        if "between 0 and 1" not in str(err) or not bool(torch.isnan(reconstruction).any()):
            raise
        return reconstruction.sum() * float("nan")


@dataclass(frozen=True)
class LocalLoss:
    """A task loss for local heads: how wide the head's output is and how it is scored."""

    name: str
    head_dim: Callable[[int], int]  # number of classes → head output size
    fn: Callable[..., torch.Tensor]
    gives_logits: bool  # head output are class logits (so accuracy can be reported)
    uses_temperature: bool = False  # fn takes the contrastive temperature τ

    def score(self, head_output: torch.Tensor, labels: torch.Tensor, *, temperature: float) -> torch.Tensor:
        """The loss of a head's output; ``temperature`` reaches only the losses that have one."""
        if self.uses_temperature:
            return self.fn(head_output, labels, temperature=temperature)
        return self.fn(head_output, labels)


LOCAL_LOSSES: Registry[LocalLoss] = Registry("local loss", plural="local losses")
LOCAL_LOSSES.register("ce", LocalLoss("ce", lambda classes: classes, cross_entropy, gives_logits=True))
LOCAL_LOSSES.register(
    "contrast",
    LocalLoss("contrast", lambda classes: 128, supervised_contrastive, gives_logits=False, uses_temperature=True),
)

# ---------------------------------------------------------------------------------------------------
# λ tables, docs/methods.md §4: (model, dataset) → K → (λxx_first, λxy_first, λxx_last, λxy_last).
Lambdas = tuple[float, float, float, float]

LAMBDA_TABLES: dict[tuple[str, str], dict[int, Lambdas]] = {
    ("resnet32", "cifar10"): {2: (5, 1, 0, 0), 4: (6, 0, 1, 2), 8: (5, 0, 0, 2), 16: (5, 0.05, 0.2, 0.5)},
    ("resnet110", "cifar10"): {2: (5, 0.5, 0, 0), 4: (1, 0, 0, 1), 8: (5, 0, 0, 1), 16: (5, 0, 0.5, 1)},
    ("resnet110", "stl10"): {2: (10, 1, 0, 0), 4: (20, 0.2, 5, 2), 8: (20, 0.2, 5, 1), 16: (20, 0.5, 10, 0.1)},
    ("resnet110", "svhn"): {2: (1, 0.1, 0, 0), 4: (5, 0, 0.5, 1), 8: (5, 0, 0.5, 2), 16: (5, 0.2, 0.5, 1)},
}
# Memory-balanced runs (docs/methods.md §4): model → K → λ.
BALANCED_LAMBDA_TABLES: dict[str, dict[int, Lambdas]] = {
    "resnet32": {2: (5, 0.1, 0, 0), 3: (5, 0, 5, 0.1), 4: (5, 0, 0, 0.1), 8: (5, 0, 0, 2)},
    "resnet110": {2: (5, 0.1, 0, 0), 3: (5, 0, 5, 0.1), 4: (5, 0, 0, 0.1)},
}


def lookup_lambdas(model: str, dataset: str | None, num_modules: int, *, balanced: bool) -> tuple[Lambdas, str]:
    """λ for a configuration, and where it came from (recorded in the run's config).

    ``balanced``: the run uses the papers' memory-balanced cuts; their λ were published for CIFAR-10 only,
    so other datasets use their own table. Where the tables have no entry (our choice, docs/methods.md §4):
    the nearest K of the same (model, dataset) table, else of the model's CIFAR-10 table, else of
    ResNet-32's CIFAR-10 table (ties to the smaller K). For K ≥ 3 only entries of K ≥ 3 qualify: a K = 2
    entry defines one local module, its "last" values are never used — at K = 3 they would give module 1
    the weights (0, 0), a module that never learns.
    """
    if balanced and dataset == "cifar10" and num_modules in BALANCED_LAMBDA_TABLES.get(model, {}):
        return BALANCED_LAMBDA_TABLES[model][num_modules], f"table: {model} memory-balanced K={num_modules}"
    table = LAMBDA_TABLES.get((model, dataset or ""))
    if table and num_modules in table:
        return table[num_modules], f"table: {model} / {dataset} K={num_modules}"
    key = next(k for k in ((model, dataset or ""), (model, "cifar10"), ("resnet32", "cifar10")) if k in LAMBDA_TABLES)
    usable = [k for k in LAMBDA_TABLES[key] if num_modules < 3 or k >= 3]
    nearest = min(usable, key=lambda k: (abs(k - num_modules), k))
    return LAMBDA_TABLES[key][nearest], (
        f"default (no table entry for {model} / {dataset or 'an unnamed dataset'} K={num_modules}): "
        f"{key[0]} / {key[1]} K={nearest}"
    )


def lambda_schedule(lambdas: Lambdas, num_modules: int) -> list[tuple[float, float]]:
    """(λ_xx, λ_xy) for each local module m = 0..K−2, linear from first to last (docs/methods.md §4).

    r = m / (K − 2) (r = 0 when K = 2); λ = λ_first·(1 − r) + λ_last·r.
    """
    xx_first, xy_first, xx_last, xy_last = lambdas
    out = []
    for m in range(num_modules - 1):
        r = m / (num_modules - 2) if num_modules > 2 else 0.0
        out.append((xx_first * (1 - r) + xx_last * r, xy_first * (1 - r) + xy_last * r))
    return out
