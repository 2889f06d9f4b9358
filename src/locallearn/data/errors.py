"""The one error type of the data package: everything a user can fix (a missing, truncated or corrupt file,
no network, a bad archive) is a `DatasetError` with a one-line message that names the file and the fix."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset cannot be used as it is on disk; the message says which file and what to do."""


class CorruptFileError(DatasetError):
    """One file is unreadable or does not hold what its official format promises."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = one_line(reason)
        super().__init__(f"{self.path} is corrupt: {self.reason}")


def one_line(text: object) -> str:
    """Collapse a message (often an exception's ``str``) onto one line."""
    return " ".join(str(text).split())
