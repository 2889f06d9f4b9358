"""Benchmark grids over the library: ``locallearn bench memory|speed|accuracy`` and ``benchmarks/run.py``; and
the pipeline against the other uses of the same cores, ``locallearn bench pipeline`` (``bench/pipeline.py``). The
meters they read are the core's (``locallearn.memory``); the project's own thresholds are ``benchmarks/targets.py``."""

from locallearn.bench.grid import BenchConfig, GridSpec
from locallearn.bench.runner import RunOptions, run_memory, run_speed

__all__ = ["BenchConfig", "GridSpec", "RunOptions", "run_memory", "run_speed"]
