"""Ctrl-C that always stops a run, at a safe point.

Python delivers SIGINT as a ``KeyboardInterrupt`` raised wherever the main thread happens to be — inside a
finalizer (``__del__``) it is printed as "Exception ignored" and lost, and the run goes on. So while a run
trains, the first Ctrl-C only *requests* a stop, and the training and evaluation loops act on the request
between two batches (``check``); a second Ctrl-C raises at once, as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C (SIGINT) at a safe point; the message says what is kept."""


_requested = threading.Event()


def check() -> None:
    """Raise ``Interrupted`` if a stop was requested (call between batches)."""
    if _requested.is_set():
        _requested.clear()
        raise Interrupted("interrupted")


@contextlib.contextmanager
def stop_between_batches() -> Iterator[None]:
    """Within the block, the first SIGINT requests a stop (``check`` raises it) and a second one raises at
    once. Outside the main thread (nothing to install) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum, frame) -> None:
        if _requested.is_set():  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        _requested.set()

    previous = signal.signal(signal.SIGINT, request)
    _requested.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
