"""Declarative checks of configuration values, one error style for every option.

A config dataclass declares each field's check in its metadata (``field(default=..., metadata=check(Int(1)))``)
and calls ``check_fields(self)`` in ``__post_init__``: every value is checked, and normalised where the
check says so (a list of numbers becomes a tuple of floats), by one loop instead of a hand-written
``if`` per option. A failed check raises ``ValueError`` whose message starts with the option's name and
says what is valid, e.g. ``epochs must be an integer >= 1, got 2.5.``
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

Check = Callable[[str, Any], Any]  # (option name, value) → normalised value, or ValueError


def check(fn: Check, **metadata: Any) -> dict[str, Any]:
    """Field metadata carrying a check (and any other metadata, e.g. a flag's help text)."""
    return {"check": fn, **metadata}


def check_fields(obj: Any) -> None:
    """Run every field's check on a (possibly frozen) dataclass instance, storing normalised values."""
    for f in dataclasses.fields(obj):
        fn = f.metadata.get("check")
        if fn is not None:
            object.__setattr__(obj, f.name, fn(f.name, getattr(obj, f.name)))


def is_number(value: Any) -> bool:
    """A finite int or float; booleans are not numbers here (``True`` is not a learning rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Int:
    """An integer in [minimum, maximum]."""

    minimum: int | None = None
    maximum: int | None = None

    def __call__(self, name: str, value: Any) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        if not ok:
            raise ValueError(f"{name} must be an integer {self._range()}, got {value!r}.")
        return value

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f">= {self.minimum}"
        return f"<= {self.maximum}" if self.maximum is not None else ""


@dataclass(frozen=True)
class Float:
    """A finite number in the interval given (``above``: strictly greater than; ``minimum``: at least)."""

    minimum: float | None = None
    above: float | None = None
    below: float | None = None  # strictly less than
    maximum: float | None = None

    def __call__(self, name: str, value: Any) -> float:
        ok = is_number(value)
        ok = ok and (self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
        ok = ok and (self.below is None or value < self.below) and (self.maximum is None or value <= self.maximum)
        if not ok:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}.")
        return float(value) if isinstance(value, int) else value

    def describe(self) -> str:
        """E.g. "a positive number", "a finite number >= 0", "a positive number <= 604800"."""
        parts = []
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.above is not None and self.above != 0:
            parts.append(f"> {self.above:g}")
        if self.below is not None:
            parts.append(f"< {self.below:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        kind = "a positive number" if self.above == 0 else "a finite number"
        return kind + (" " + " and ".join(parts) if parts else "")


@dataclass(frozen=True)
class Bool:
    """``true`` or ``false``; a string such as "False" never switches an option on."""

    def __call__(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}.")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of names."""

    choices: tuple[str, ...]
    what: str = "value"

    def __call__(self, name: str, value: Any) -> str:
        if value not in self.choices:
            raise ValueError(f"{name}: unknown {self.what} {value!r}; valid {self.what}s are {', '.join(self.choices)}.")
        return value


@dataclass(frozen=True)
class Text:
    """A string (paths, names checked elsewhere); ``empty`` allows ''."""

    empty: bool = False

    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or (not self.empty and not value.strip()):
            raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
        return value


@dataclass(frozen=True)
class Numbers:
    """A sequence of finite numbers (``length`` of them, each >= ``minimum`` / > ``above``), as a tuple of floats."""

    length: int | None = None
    minimum: float | None = None
    above: float | None = None
    what: str = "numbers"

    def __call__(self, name: str, value: Any) -> tuple[float, ...]:
        ok = isinstance(value, (list, tuple)) and all(is_number(v) for v in value)
        ok = ok and (self.length is None or len(value) == self.length)
        ok = ok and all((self.minimum is None or v >= self.minimum) and (self.above is None or v > self.above)
                        for v in value)
        if not ok:
            size = f"{count_word(self.length)} " if self.length is not None else ""
            bound = f" >= {self.minimum:g}" if self.minimum is not None else (f" > {self.above:g}" if self.above is not None else "")
            raise ValueError(f"{name} must be {size}{self.what}{bound}, got {list(value) if isinstance(value, tuple) else value!r}.")
        return tuple(float(v) for v in value)


def count_word(n: int) -> str:
    """"one" … "ten" for messages ("three numbers"), digits beyond."""
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


@dataclass(frozen=True)
class Optional:
    """None, or a value that passes ``inner``."""

    inner: Check

    def __call__(self, name: str, value: Any) -> Any:
        return None if value is None else self.inner(name, value)


@dataclass(frozen=True)
class Mapping:
    """A dict (e.g. backbone arguments)."""

    what: str = "a mapping"

    def __call__(self, name: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected {self.what}, got {value!r}.")
        return dict(value)

