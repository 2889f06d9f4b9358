"""Memory meters and benchmark grids: ``locallearn bench memory|speed`` and ``benchmarks/run.py``."""

from locallearn.bench.grid import BenchConfig, GridSpec
from locallearn.bench.meters import CudaPeakMeter, SavedTensorMeter, StepMemoryMeter
from locallearn.bench.runner import RunOptions, run_memory, run_speed

__all__ = [
    "BenchConfig",
    "CudaPeakMeter",
    "GridSpec",
    "RunOptions",
    "SavedTensorMeter",
    "StepMemoryMeter",
    "run_memory",
    "run_speed",
]
