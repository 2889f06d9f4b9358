"""`python -m locallearn ...`: the same as the `locallearn` console script."""

from locallearn.cli import main

raise SystemExit(main())
