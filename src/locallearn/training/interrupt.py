"""Ctrl-C (and SIGTERM) that always stops a run, at a safe point.

Python delivers SIGINT as a ``KeyboardInterrupt`` raised wherever the main thread happens to be — inside a
finalizer (``__del__``) it is printed as "Exception ignored" and lost, and the run goes on. So while a run
trains, the first Ctrl-C only *requests* a stop, and the training and evaluation loops act on the request
between two batches (``check``); a second Ctrl-C raises at once, as usual. Where that lands in a finalizer,
Python would print it as "Exception ignored" and drop it: it is dropped silently, and the first Ctrl-C's
request stops the run at the next batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C (SIGINT) at a safe point; the message says what is kept and how to go on,
    ``kept`` the first part alone (for a caller that says how to go on itself, as ``bench accuracy`` does)."""

    def __init__(self, message: str = "interrupted", kept: str | None = None) -> None:
        super().__init__(message)
        self.kept = kept or message


_requested = threading.Event()
_by = [signal.SIGINT]  # the signal of the last stop requested
_terminated = threading.Event()  # a SIGTERM came during the run: kept after its stop request is acted on or dropped


def stopped_how() -> str:
    """How the last stop is said: "interrupted" (Ctrl-C), or "stopped by SIGTERM" — which, under torchrun, is
    also how torchrun stops the other ranks when one has failed (its own lines name that one)."""
    if _by[0] != signal.SIGTERM:
        return "interrupted"
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        return "stopped by SIGTERM (a scheduler ending the job, or torchrun stopping every rank when one failed)"
    return "stopped by SIGTERM"


def terminated() -> bool:
    """Whether a SIGTERM came during the run (``stop_between_batches``) or since (``sigterm_noted``): a pipeline
    rank whose link to a rank that died broke, and which torchrun's agent is now stopping, whether or not a
    batch boundary acted on it (the request is dropped when the error leaves the run)."""
    return _terminated.is_set()


def forget_sigterm() -> None:
    """Start afresh: a SIGTERM noted by an earlier run in this process (``terminated``) is not the next one's."""
    _terminated.clear()


@contextlib.contextmanager
def sigterm_noted() -> Iterator[None]:
    """Within the block, a SIGTERM is noted (``terminated``) instead of ending the process where it is, so that
    a wait can end on it and say why. Outside the main thread it runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _terminated.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status() -> int:
    """The exit status of a command stopped by the last stop request: 128 + its signal (130 for Ctrl-C, 143
    for SIGTERM, as schedulers expect). Read once: the next stop is Ctrl-C's until a signal says otherwise."""
    status, _by[0] = 128 + int(_by[0]), signal.SIGINT
    return status


def check() -> None:
    """Raise ``Interrupted`` if a stop was requested (call between batches)."""
    if _requested.is_set():
        _requested.clear()
        raise Interrupted(stopped_how())


@contextlib.contextmanager
def stop_between_batches() -> Iterator[None]:
    """Within the block, the first SIGINT requests a stop (``check`` raises it) and a second one raises at
    once. Outside the main thread (nothing to install) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum, frame) -> None:
        _by[0] = signum
        if signum == signal.SIGTERM:
            _terminated.set()
        if _requested.is_set():  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        _requested.set()

    def unraisable(info) -> None:  # the second Ctrl-C landed in a finalizer, which Python would print and
        if not isinstance(info.exc_value, KeyboardInterrupt):  # drop: silent, as the stop request it followed
            hook(info)  # is still pending, and stops the run at the next batch

    # SIGTERM (a scheduler ending a job, `kill`) is a stop request too: the run stops at the next batch as for
    # Ctrl-C, saying what is kept, instead of dying where it was
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    _requested.clear()
    _terminated.clear()
    _by[0] = signal.SIGINT
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = hook
        _requested.clear()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` where the main thread is, as Ctrl-C does, so work
    that keeps what it did on Ctrl-C (a benchmark's measured rows) keeps it when a scheduler stops it too;
    ``stopped_how`` and ``exit_status`` then say SIGTERM (143). Outside the main thread it runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        _by[0] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    _by[0] = signal.SIGINT
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
