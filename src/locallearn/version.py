"""The package version, in one place (``locallearn.__version__``, run provenance, benchmark records)."""

__version__ = "0.1.0"
