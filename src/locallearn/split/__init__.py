"""Where to cut a backbone into K local modules (docs/methods.md §2.2).

A split is a list of K−1 unit indices ``ends``: module k holds units ``ends[k-1]+1 .. ends[k]`` and the
last module holds the rest, classifier included. Splits are chosen by name from ``SPLITS``, or given as an
explicit list of cuts ``[(stage, block), ...]``, each naming the unit a module ends with:

- ``paper``: the InfoPro / ContSup tables (``tables.py``), for the K they define; a backbone may define its
  own (``Backbone.named_splits``: Swin's stage boundaries).
- ``balanced``: the papers' memory-balanced tables where they exist, otherwise ``auto``.
- ``auto`` (our choice): minimise the largest module's peak activation bytes as ``auto.py`` models them from
  measurements — units, the local objective, the held hand-off and ContSup's context encoders.
- ``uniform``: the same number of units in every module.
- ``stages``: the backbone's own stage boundaries (Swin: K = 2 after stage 2, K = 4 one module per stage).

A new named split is a function ``(config, backbone) -> ends`` registered with ``SPLITS.register``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from locallearn.registry import Registry
from locallearn.validate import Int
from locallearn.split.tables import BALANCED_SPLITS, PAPER_SPLITS, Cut, paper_ks, table_cuts

if TYPE_CHECKING:
    from locallearn.config import NetConfig
    from locallearn.models import Backbone

SplitRule = Callable[["NetConfig", "Backbone"], list[int]]  # (config, backbone) → ends, for K ≥ 2
SPLITS: Registry[SplitRule] = Registry("split", ordered=True)


def resolve_ends(config: NetConfig, backbone: Backbone) -> list[int]:
    """Unit indices where modules end, from the config's split."""
    K = config.num_modules
    check_num_modules(K, backbone.num_units)
    if not isinstance(config.split, str):
        ends = ends_from_cuts(config.split, backbone.unit_keys)
        if len(ends) != K - 1:
            raise ValueError(
                f"split: {len(ends)} {'cut makes' if len(ends) == 1 else 'cuts make'} {len(ends) + 1} modules but "
                f"num_modules={K}; give {K - 1} {'cut' if K == 2 else 'cuts'}."
            )
        return ends
    if K == 1:
        return []
    return SPLITS.get(config.split)(config, backbone)


def _named(name: str, *, fallback: SplitRule | None = None) -> SplitRule:
    """A split read from a table: the backbone's own (``named_splits``) first, else ``tables.py``. Where
    neither has this K: ``fallback``, or an error naming the K that exist."""

    def rule(config: NetConfig, backbone: Backbone) -> list[int]:
        K = config.num_modules
        own = backbone.named_splits(name)
        cuts = own.get(K) if own else table_cuts(name, config.model, K, config.image_size or backbone.image_size)
        if cuts is not None:
            return ends_from_cuts(cuts, backbone.unit_keys)
        if fallback is not None:
            return fallback(config, backbone)
        known = sorted(own) if own else (paper_ks(config.model) if name == "paper" else [])
        if not known:
            raise ValueError(
                f"split: {config.model} defines no {name} split; its splits are "
                f"{', '.join(defined_splits(config.model, backbone))} or explicit cuts."
            )
        raise ValueError(
            f"split: the {name} split of {config.model} is defined for num_modules in {known}, not {K}; use "
            f"split='balanced', 'auto', 'uniform' or explicit cuts."
        )

    return rule


def _auto(config: NetConfig, backbone: Backbone) -> list[int]:
    from locallearn.split.auto import split_costs  # measures: imported only when a computed split is asked for

    return split_costs(config, backbone).ends(config.num_modules)


def _uniform(config: NetConfig, backbone: Backbone) -> list[int]:
    return uniform_ends(backbone.num_units, config.num_modules)


SPLITS.register("paper", _named("paper"))
SPLITS.register("balanced", _named("balanced", fallback=_auto))
SPLITS.register("auto", _auto)
SPLITS.register("uniform", _uniform)
SPLITS.register("stages", _named("stages"))


def defined_splits(model: str, backbone: Backbone) -> list[str]:
    """The named splits that exist for a backbone: ``paper`` and ``stages`` only where tables define them."""
    defined = {"paper": bool(paper_ks(model) or backbone.named_splits("paper")),
               "stages": bool(backbone.named_splits("stages"))}
    return [name for name in SPLITS.names() if defined.get(name, True)]


def ends_from_cuts(cuts: Sequence, keys: Sequence) -> list[int]:
    """Validate explicit cuts against a backbone's unit keys and turn them into unit indices. A cut names the
    unit a module ends with by its key: a [stage, block] pair for the built-in backbones, the unit's index
    or name for a model of your own (``models.custom``; an index counts the units from 0 where they have names)."""
    pairs = all(isinstance(k, tuple) for k in keys)
    cuttable = [_key(k) for k in keys[:-1]]  # no cut after the classifier: the last module needs it
    named = all(isinstance(k, str) for k in keys)  # units of your own with names: a cut is a name or an index
    ends = []
    for cut in cuts:
        if pairs and not (isinstance(cut, (list, tuple)) and len(cut) == 2 and all(isinstance(c, int) for c in cut)):
            raise ValueError(f"split: each cut is a pair [stage, block] of integers, got {cut!r}.")
        unit = keys[cut] if named and isinstance(cut, int) and not isinstance(cut, bool) and 0 <= cut < len(keys) else cut
        if _key(unit) not in cuttable:
            why = ("is the last unit, the classifier, after which no module is left" if _key(unit) == _key(keys[-1])
                   else "names no unit" if isinstance(cut, str) else "is out of range")
            raise ValueError(
                f"split: cut {cut!r} {why}; valid cuts are the units {_span(cuttable)}"
                f"{f' (or their indices 0..{len(cuttable) - 1})' if named else ''} (the classifier cannot be cut after)."
            )
        ends.append(cuttable.index(_key(unit)))
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ValueError(f"split: cuts must be strictly increasing and distinct, got {[show_cut(c) for c in cuts]}.")
    return ends


def _key(cut):
    """A cut as unit keys compare: a pair as a tuple; a dotted name as ``units`` keys it (dots → underscores)."""
    if isinstance(cut, str):
        return cut.replace(".", "_")
    return tuple(cut) if isinstance(cut, (list, tuple)) else cut


def show_cut(cut):
    """A cut as logs, errors and JSON show it: a [stage, block] pair as a list, an index or a name as it is."""
    return list(cut) if isinstance(cut, (list, tuple)) else cut


def cuts_from_ends(ends: Sequence[int], keys: Sequence) -> list:
    return [keys[e] for e in ends]


def uniform_ends(num_units: int, num_modules: int) -> list[int]:
    """Units spread as evenly as possible; earlier modules get the extra unit."""
    sizes = [len(a) for a in np.array_split(np.arange(num_units), num_modules)]
    return list(np.cumsum(sizes)[:-1] - 1)


def check_num_modules(num_modules: int, num_units: int) -> None:
    Int(1)("num_modules", num_modules)
    if num_modules > num_units:
        raise ValueError(
            f"num_modules={num_modules} is larger than the backbone's {num_units} units; "
            f"choose num_modules between 1 and {num_units}."
        )


def _span(keys: Sequence) -> str:
    if not all(isinstance(k, tuple) and len(k) == 2 for k in keys):  # a model of your own: indices or names
        shown = [str(k) for k in keys]
        return ", ".join(shown) if len(shown) <= 12 else f"{', '.join(shown[:6])}, ..., {', '.join(shown[-3:])}"
    by_stage: dict[int, list[int]] = {}
    for s, b in keys:
        by_stage.setdefault(s, []).append(b)
    return ", ".join(f"[{s}, {v[0]}]" if len(v) == 1 else f"[{s}, {v[0]}..{v[-1]}]" for s, v in by_stage.items())


__all__ = [
    "BALANCED_SPLITS",
    "PAPER_SPLITS",
    "SPLITS",
    "Cut",
    "check_num_modules",
    "cuts_from_ends",
    "defined_splits",
    "ends_from_cuts",
    "paper_ks",
    "resolve_ends",
    "show_cut",
    "table_cuts",
    "uniform_ends",
]
