"""Stop signals (SIGINT, SIGTERM, SIGHUP), honoured at safe points.

A handler only records the signal; the code acts on it where the stores are consistent (between
training iterations, between runs, between trials). Raising from a handler instead would land
inside whatever library code runs at that moment (a database finalizer, say), which may swallow
the exception and carry on.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: int | None = None


class Interrupted(Exception):  # noqa: N818 (a signal, not an error)
    """A stop signal arrived; the process should exit with `exit_code` (128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


def _record(signum: int, frame: object) -> None:
    global _received
    _received = signum


def install() -> None:
    """Record stop signals instead of dying on them (call once, in the main thread)."""
    global _received
    _received = None
    for sig in SIGNALS:
        signal.signal(sig, _record)


def received() -> int | None:
    """The stop signal received so far, if any."""
    return _received


def check() -> None:
    """Raise `Interrupted` if a stop signal has arrived (call at safe points)."""
    if _received is not None:
        raise Interrupted(_received)
