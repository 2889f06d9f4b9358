"""Memory meters and benchmark grids."""

from locallearn.bench.meters import SavedTensorMeter

__all__ = ["SavedTensorMeter"]
