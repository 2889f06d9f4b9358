"""Where to cut a backbone into K local modules (METHODS.md 2.2).

A split is a list of K−1 unit indices ``ends``: module k holds units ``ends[k-1]+1 .. ends[k]`` and the
last module holds the rest, classifier included. Splits are chosen by name:

- ``paper``: the InfoPro / ContSup tables, for the K they define.
- ``balanced``: the papers' memory-balanced tables where they exist, otherwise ``auto``.
- ``auto`` (our choice): minimise the largest module's peak activation bytes as ``split_cost`` models them
  from measurements — units, the local objective, the held hand-off and ContSup's context encoders
  (``balanced_ends``, exact over that model).
- ``uniform``: the same number of units in every module.
- ``stages``: the backbone's own stage boundaries (``Backbone.named_splits``; Swin: K = 2 after stage 2,
  K = 4 one module per stage, METHODS.md 6). A backbone may also define its ``paper`` split that way.
- an explicit list of cuts ``[(stage, block), ...]``, each naming the unit a module ends with.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Cut = tuple[int, int]

SPLIT_NAMES = ("paper", "balanced", "auto", "uniform", "stages")

# METHODS.md 2.2, "paper" split: model → K → cuts.
PAPER_SPLITS: dict[str, dict[int, list[Cut]]] = {
    "resnet32": {
        2: [(2, 1)],
        4: [(1, 2), (2, 1), (3, 0)],
        8: [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)],
        16: [(0, 0)] + [(1, b) for b in range(5)] + [(2, b) for b in range(5)] + [(3, b) for b in range(4)],
    },
    "resnet110": {
        2: [(2, 8)],
        4: [(1, 11), (2, 7), (3, 3)],
        8: [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)],
        16: [(1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7), (2, 11), (2, 15),
             (3, 1), (3, 5), (3, 9), (3, 13)],
    },
}

# METHODS.md 2.2, memory-balanced tables: (model, image family) → K → cuts. CIFAR-10's tables serve every
# 32×32 dataset (CIFAR-100, SVHN) since memory depends on the image size, not the labels.
_R110_BALANCED_32 = {2: [(1, 14)], 3: [(1, 9), (2, 2)], 4: [(1, 6), (1, 14), (2, 8)]}
BALANCED_SPLITS: dict[tuple[str, int], dict[int, list[Cut]]] = {
    ("resnet110", 32): _R110_BALANCED_32,
    ("resnet110", 96): {**_R110_BALANCED_32, 3: [(1, 8), (2, 1)]},
    ("resnet32", 32): {
        2: [(1, 3)],
        4: [(1, 2), (1, 4), (2, 2)],
        8: [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)],
    },
}


def table_cuts(split: str, model: str, num_modules: int, image_size: int) -> list[Cut] | None:
    """The published cuts for ``split`` ("paper" or "balanced"), or None where no table has this K."""
    if num_modules == 1:
        return []
    if split == "paper":
        return PAPER_SPLITS.get(model, {}).get(num_modules)
    if split == "balanced":
        return BALANCED_SPLITS.get((model, image_size), {}).get(num_modules)
    return None


def paper_ks(model: str) -> list[int]:
    return sorted(PAPER_SPLITS.get(model, {}))


def ends_from_cuts(cuts: Sequence[Sequence[int]], keys: Sequence[Cut]) -> list[int]:
    """Validate explicit cuts against a backbone's unit keys and turn them into unit indices."""
    cuttable = [tuple(k) for k in keys[:-1]]  # no cut after the classifier: the last module needs it
    ends = []
    for cut in cuts:
        if not (isinstance(cut, (list, tuple)) and len(cut) == 2 and all(isinstance(c, int) for c in cut)):
            raise ValueError(f"split: each cut is a pair [stage, block] of integers, got {cut!r}.")
        if tuple(cut) not in cuttable:
            raise ValueError(
                f"split: cut {list(cut)} is out of range; valid cuts are the units "
                f"{_span(cuttable)} (the classifier cannot be cut after)."
            )
        ends.append(cuttable.index(tuple(cut)))
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ValueError(f"split: cuts must be strictly increasing and distinct, got {[list(c) for c in cuts]}.")
    return ends


def cuts_from_ends(ends: Sequence[int], keys: Sequence[Cut]) -> list[Cut]:
    return [tuple(keys[e]) for e in ends]


def uniform_ends(num_units: int, num_modules: int) -> list[int]:
    """Units spread as evenly as possible; earlier modules get the extra unit."""
    sizes = [len(a) for a in np.array_split(np.arange(num_units), num_modules)]
    return list(np.cumsum(sizes)[:-1] - 1)


def balanced_ends(
    unit_bytes: Sequence[float],
    end_bytes: Sequence[float],
    num_modules: int,
    *,
    span_bytes: Callable[[int, int], float] | None = None,
    start_bytes: Callable[[int, int, int], float] | None = None,
) -> list[int]:
    """Contiguous partition minimising the largest module cost (exact, by dynamic programming).

    The cost of module m spanning units i..j is sum(unit_bytes[i..j]) + end_bytes[j] + span_bytes(i, j)
    + start_bytes(m−1, i−1, p), with p the unit module m−2 ends with (−1 when m = 1):

    - ``end_bytes[j]``: what the local objective attached after unit j costs (auxiliary head, decoder). The
      last module has no auxiliary objective, so its end cost is 0 (pass end_bytes[-1] = 0);
    - ``span_bytes(i, j)``: what depends on both ends of a local module (FeatRecon's decoder maps unit j's
      output back to module i's input); it is not charged to the last module;
    - ``start_bytes(b, e, p)``: what boundary b, after unit e, costs the module it feeds (never the first):
      its held input and ContSup's context encoders, which run at the start of that module and may read
      the previous boundary's tensor, after unit p (ResEnc of Rn modes) — hence the third argument.

    The dynamic programme runs over (modules, last end, previous end): O(K·n³) comparisons, vectorised
    over the previous end. ``split_cost`` measures the terms; see it for the model.
    """
    n, K = len(unit_bytes), num_modules
    prefix = np.concatenate([[0.0], np.cumsum(unit_bytes)])

    def own(i: int, j: int) -> float:  # units i..j inclusive, without the start cost
        extra = span_bytes(i, j) if span_bytes is not None and j < n - 1 else 0.0
        return prefix[j + 1] - prefix[i] + end_bytes[j] + extra

    def starts(b: int, e: int) -> np.ndarray:  # start cost of boundary b after unit e, by p + 1 (p = −1..e−1)
        out = np.zeros(e + 1)
        if start_bytes is not None:
            for p in range(max(b - 1, -1), e):  # b boundaries before: module b−1 ends at p ≥ b−1
                out[p + 1] = start_bytes(b, e, p)
        return out

    inf = float("inf")
    # best[k][j][p + 1]: minimal largest cost covering units 0..j with k modules, the k-th ending at j and
    # the (k−1)-th at p (p = −1 for k = 1); arg: the end of module k−2 that achieves it.
    best = np.full((K + 1, n, n + 1), inf)
    arg = np.full((K + 1, n, n + 1), -1, dtype=int)
    for j in range(n):
        best[1][j][0] = own(0, j)
    for k in range(2, K + 1):
        b = k - 2  # the boundary before module k (1-based): after unit i
        start_of = {i: starts(b, i) for i in range(k - 2, n - 1)}
        for j in range(k - 1, n):
            for i in range(k - 2, j):  # module k spans units i+1..j
                c = np.maximum(best[k - 1][i][: i + 1], own(i + 1, j) + start_of[i])
                q = int(np.argmin(c))
                best[k][j][i + 1], arg[k][j][i + 1] = c[q], q - 1
    ends, j, state = [], n - 1, int(np.argmin(best[K][n - 1]))
    for k in range(K, 1, -1):
        i = state - 1
        ends.append(i)
        state, j = arg[k][j][state] + 1, i
    return sorted(ends)


def check_num_modules(num_modules: int, num_units: int) -> None:
    if not isinstance(num_modules, int) or num_modules < 1:
        raise ValueError(f"num_modules must be a positive integer, got {num_modules!r}.")
    if num_modules > num_units:
        raise ValueError(
            f"num_modules={num_modules} is larger than the backbone's {num_units} units; "
            f"choose num_modules between 1 and {num_units}."
        )


def _span(keys: Sequence[Cut]) -> str:
    by_stage: dict[int, list[int]] = {}
    for s, b in keys:
        by_stage.setdefault(s, []).append(b)
    return ", ".join(f"[{s}, {v[0]}]" if len(v) == 1 else f"[{s}, {v[0]}..{v[-1]}]" for s, v in by_stage.items())
