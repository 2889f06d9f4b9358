"""Local-learning methods as objects (``base.Method``), one file each, registered in ``METHODS`` by the file
that defines them. Importing this package imports every method file (``locallearn list`` shows them sorted by name).

To add a method: write ``methods/<name>.py`` that builds a ``Method`` (or a subclass whose
``build_objectives`` returns your ``LocalObjective`` modules) and calls ``register_method``, then import it
below. See docs/architecture.md.
"""

from locallearn.methods.base import (
    METHODS,
    Boundary,
    ForwardState,
    LocalObjective,
    Method,
    NetworkLoss,
    SupervisedObjective,
    register_method,
)
from locallearn.methods import e2e, greedy, dgl, infopro, contsup, featrecon  # noqa: E402,F401  (registration)

__all__ = [
    "METHODS",
    "Boundary",
    "ForwardState",
    "LocalObjective",
    "Method",
    "NetworkLoss",
    "SupervisedObjective",
    "register_method",
]
