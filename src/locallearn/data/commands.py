"""The `locallearn data ...` subcommands as plain functions (the CLI only parses arguments)."""

from __future__ import annotations

from pathlib import Path

from locallearn.data.fetch import check, download


def data_download(name: str, root: Path) -> int:
    """Fetch, verify and unpack dataset ``name`` into ``root``, then print what is there."""
    print(download(name, root))
    return 0


def data_check(name: str, root: Path) -> int:
    """Print which files of ``name`` under ``root`` are present, missing or corrupt; 1 if any is unusable."""
    report = check(name, root)
    print(report)
    return 0 if report.ok else 1
