"""The published cut points (docs/methods.md §2.2): InfoPro's and ContSup's "paper" splits and the papers'
memory-balanced splits. A cut is (stage, block) with 0-based blocks, stage 0 the stem; a module ends right
after the named unit, so K−1 cuts make K modules."""

from __future__ import annotations

Cut = tuple[int, int]

# docs/methods.md §2.2, "paper" split: model → K → cuts.
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

# docs/methods.md §2.2, memory-balanced tables: (model, image family) → K → cuts. CIFAR-10's tables serve every
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


def table_cuts(split: str, model: str, num_modules: int, image_size: int | None) -> list[Cut] | None:
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
