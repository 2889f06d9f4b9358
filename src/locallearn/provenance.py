"""Where a result came from: the git revision of the code that produced it (run directories, benchmarks), and
the CPU it ran on (benchmarks: float sums, and the ratios of step times, differ between CPUs)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


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


def cpu_name() -> str:
    """The CPU's model name and the SIMD level PyTorch's kernels dispatch to on it, e.g. ``Intel(R) Xeon(R)
    Processor, AVX512``: two machines of one architecture can time a context path differently (measured:
    ResNet-32 K = 16 R1 took 1.63× e2e on an AMD EPYC with AVX2 and 1.77× on an Intel Xeon with AVX-512)."""
    name = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:  # Linux
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"
