"""Where a result came from: the git revision of the code that produced it (run directories, benchmarks)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_revision() -> str | None:
    """The short commit of the checkout this package runs from, with ``+dirty`` when the tree has
    uncommitted changes; None outside a git checkout (an installed package) or without git."""
    git = dict(cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git)
        dirty = subprocess.run(["git", "status", "--porcelain"], **git)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
