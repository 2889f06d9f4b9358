"""Progress of long work: a tqdm bar on a terminal, and in a log (stdout or stderr not a terminal) a plain
line every ``every_s`` seconds instead, so a job's log is never silent for a whole epoch."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from tqdm import tqdm

Log = Callable[[str], None]


class Progress:
    """``with Progress(total, what, log) as p: ... p.update(n, loss=...)``; ``what`` names the work
    ("epoch 3/8", "evaluation"). The postfix values are shown on the bar or in the log line."""

    def __init__(self, total: int | None, what: str, *, log: Log | None = None, unit: str = "batch", every_s: float = 30.0):
        self.total, self.what, self.log, self.unit, self.every_s = total, what, log, unit, every_s
        self.done = 0
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        # `train > log`: the log gets the lines, not a bar; under torchrun, rank 0 alone draws one
        if sys.stderr.isatty() and sys.stdout.isatty() and os.environ.get("RANK", "0") == "0":
            self.bar = tqdm(total=total, desc=what, unit=unit, leave=False, file=sys.stderr)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: str) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if self.log is not None and now - self.last_line >= self.every_s and self.done < (self.total or self.done + 1):
            self.last_line = now
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            self.log(f"  {self.what}: {self.done}/{self.total or '?'}{extra}, {now - self.start:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
