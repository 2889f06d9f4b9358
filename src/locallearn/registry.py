"""Name → object registries: models, methods, splits, heads, local losses, feature decoders, datasets and their
sources each live in one, so unknown names fail the same way everywhere. (Context modes are parsed from their
names, any Rn/RnE, by ``context.ContextMode.parse``; presets are the YAML files under ``configs/``.)"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries whose lookup errors list the valid names."""

    def __init__(self, kind: str, *, plural: str | None = None, ordered: bool = False, other: str = "") -> None:
        self.kind = kind  # "model", "method", ... — used in error messages
        self.plural = plural or f"{kind}s"
        self.ordered = ordered  # names() in registration order (e.g. splits, most used first), else sorted
        self.other = other  # what an unknown name may instead be, said after the valid names
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare (``reg.register("x", f)``) or as a decorator."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice; names must be unique.")
            self._entries[name] = entry
            return entry

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}"
                + (f"; {self.other}." if self.other else ".")
            ) from None

    def names(self) -> list[str]:
        return list(self._entries) if self.ordered else sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
