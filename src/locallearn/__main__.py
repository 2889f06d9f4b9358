"""`python -m locallearn ...`: the same as the `locallearn` console script."""

from locallearn.cli import console

raise SystemExit(console())
