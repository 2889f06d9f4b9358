"""Which pipeline stage owns which local modules.

Each stage owns a contiguous group of modules (its modules' outputs flow forward only, so contiguity keeps
one hand-off per stage boundary). A pipeline runs at the pace of its slowest stage, so the default
assignment ("balanced") times every module's training step — forward, local loss, backward, including
the context encoders and auxiliary head it trains — and cuts the sequence to minimise the largest
stage's total. "even" gives every stage the same number of modules (±1); a list of counts is explicit.
"""

from __future__ import annotations

from typing import Sequence

import torch

from locallearn.engine import time_modules
from locallearn.net import LocalNet
from locallearn.training.config import parse_assign
from locallearn.validate import Int


def check_layout(num_modules: int, world_size: int, data_parallel: int) -> int:
    """The number of pipeline stages for ``world_size`` ranks, or a ValueError naming the option."""
    Int(1)("data_parallel", data_parallel)
    if world_size % data_parallel:
        raise ValueError(
            f"data_parallel: the world size {world_size} is not a multiple of --data-parallel {data_parallel}; "
            f"the ranks form stages × data_parallel, so use a world size of k·{data_parallel}."
        )
    stages = world_size // data_parallel
    if stages > num_modules:
        raise ValueError(
            f"parallel: {world_size} ranks at --data-parallel {data_parallel} make {stages} pipeline stages but the "
            f"network has only {num_modules} local module{'s' if num_modules > 1 else ''}; use at most "
            f"{num_modules * data_parallel} rank{'s' if num_modules * data_parallel > 1 else ''}, "
            f"more modules (--num-modules), or a larger --data-parallel."
        )
    return stages


def check_assign(how: str | Sequence[int], stages: int, num_modules: int) -> None:
    """Refuse explicit module counts that do not fit ``stages`` stages of ``num_modules`` modules."""
    how = parse_assign(how)
    if isinstance(how, list):
        if len(how) != stages:
            raise ValueError(
                f"pipeline_assign: {len(how)} module count{'s' if len(how) > 1 else ''} given for {stages} pipeline "
                f"stage{'s' if stages > 1 else ''}; give one count per stage."
            )
        from_counts(how, num_modules)


def partition(costs: Sequence[float], stages: int) -> list[range]:
    """Cut ``costs`` into ``stages`` non-empty contiguous ranges minimising the largest range's sum.

    Dynamic programming over (modules placed, stages used); ties go to the earlier cut.
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"partition: cannot cut {n} modules into {stages} non-empty stages.")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[s][i]: the least possible maximum over s stages holding modules [0, i)
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for i in range(s, n - (stages - s) + 1):
            for j in range(s - 1, i):
                value = max(best[s - 1][j], prefix[i] - prefix[j])
                if value < best[s][i] - 1e-12:
                    best[s][i], cut[s][i] = value, j
    bounds, i = [], n
    for s in range(stages, 0, -1):
        bounds.append(range(cut[s][i], i))
        i = cut[s][i]
    return bounds[::-1]


def from_counts(counts: Sequence[int], num_modules: int) -> list[range]:
    if sum(counts) != num_modules:
        raise ValueError(
            f"pipeline_assign: the counts {list(counts)} give {sum(counts)} modules but the network has "
            f"{num_modules}; the counts must add up to {num_modules}."
        )
    out, start = [], 0
    for c in counts:
        out.append(range(start, start + c))
        start += c
    return out


def assign_modules(
    net: LocalNet, stages: int, how: str | Sequence[int] = "balanced", *, costs: Sequence[float] | None = None
) -> list[range]:
    """The modules of each stage. ``costs`` (seconds per module) is measured when "balanced" needs it."""
    how = parse_assign(how)
    K = net.num_modules
    check_assign(how, stages, K)
    if isinstance(how, list):
        return from_counts(how, K)
    if how == "even":
        base, extra = divmod(K, stages)
        return from_counts([base + (s < extra) for s in range(stages)], K)
    return partition(costs if costs is not None else [1.0] * K, stages)


def measure_module_costs(
    net: LocalNet, *, batch_size: int, device: torch.device | str = "cpu", repeats: int = 2
) -> list[float]:
    """Median seconds of each module's training computation on a random batch of the network's input shape
    (``engine.time_modules``: hand-off, forward, local loss, backward; measuring changes nothing a run computes)."""
    size = net.config.image_size or net.backbone.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, net.backbone.in_channels, size, size, generator=generator).to(device)
    labels = torch.randint(0, net.config.num_classes, (batch_size,), generator=generator).to(device)
    return time_modules(net, images, labels, repeats=repeats)
