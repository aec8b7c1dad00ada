"""Stores that are briefly unreachable (a database restarting, a tracking server gone for a
while): a worker retries with backoff for a bounded time ($HARNESS_STORE_RETRY_SECONDS, 120),
says on stderr in one line per retry what it waits for, and honours a stop signal between
attempts; after the bound, one StoreError line.

Only errors that say the store could not be reached are retried (connection refused or lost,
the server shutting down or starting up, too many connections, an SQLite database whose write
lock another worker held past the busy timeout); any other error is raised at once. Calls from
threads other than the main one (the heartbeat) are tried once: their caller tries again later
anyway.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from harness import interrupt
from harness.errors import StoreError

RETRY_SECONDS = 120.0  # how long a store may stay unreachable ($HARNESS_STORE_RETRY_SECONDS)
FIRST_WAIT = 0.5  # seconds before the first retry; doubled each time, up to MAX_WAIT
MAX_WAIT = 8.0
SLICE = 0.1  # a stop signal is noticed within this while waiting
HTTP_TIMEOUT = "15"  # seconds an MLflow HTTP request may wait for the server (MLflow: 120)

# What the database drivers, SQLAlchemy, requests and MLflow say when a store cannot be reached.
TRANSIENT = re.compile(
    r"the database system is (?:shutting down|starting up|in recovery mode|not yet accepting"
    r" connections)|server closed the connection unexpectedly|terminating connection due to "
    r"administrator command|connection refused|too many clients already|remaining connection "
    r"slots are reserved|connection already closed|server is closed|could not connect to server"
    r"|could not receive data from server|no connection to the server|SSL SYSCALL error|"
    r"consuming input failed|Connection aborted|RemoteDisconnected|Connection reset by peer|"
    r"Read timed out|database is locked",
    re.IGNORECASE,
)
VAGUE = re.compile(r"Max retries exceeded", re.IGNORECASE)  # said with one of the above, or alone

T = TypeVar("T")


def retry_seconds() -> float:
    """How long to retry an unreachable store: $HARNESS_STORE_RETRY_SECONDS, else 120."""
    text = os.environ.get("HARNESS_STORE_RETRY_SECONDS", "").strip()
    if not text:
        return RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also NaN
        raise StoreError(
            f"HARNESS_STORE_RETRY_SECONDS must be a number of seconds >= 0, not {text!r}"
        )
    return value


def take_over_http_retries() -> None:
    """Let the harness, not MLflow, retry HTTP requests to a tracking server (MLflow's own
    retries sleep for minutes and no signal wakes them), and bound each request's wait;
    settings the user made are kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT)


def transient(err: BaseException) -> str | None:
    """What made a store unreachable ("connection refused", ...), from an error or the errors
    it was raised from; None if the error is not one of those."""
    for pattern in (TRANSIENT, VAGUE):
        seen: BaseException | None = err
        for _ in range(20):  # a chain is short; a cycle must not hang us
            if seen is None:
                break
            found = pattern.search(str(seen))
            if found:
                return found.group(0).lower()
            seen = seen.__cause__ or seen.__context__
    return None


class Retrying:
    """Calls into one store, retried while it is unreachable. After one call has given up,
    later calls are tried once (cleaning up after the failure must not wait again)."""

    def __init__(self, what: str):
        self.what = what
        self.gave_up = False

    def call(self, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`action(*args, **kwargs)`, retried while its error says the store is unreachable."""
        if threading.current_thread() is not threading.main_thread():
            return action(*args, **kwargs)
        deadline = None
        attempt = 0
        while True:
            try:
                result = action(*args, **kwargs)
            except Exception as err:
                reason = transient(err)
                if reason is None or self.gave_up or interrupt.received() is not None:
                    raise
                now = time.monotonic()
                if deadline is None:
                    bound = retry_seconds()
                    deadline = now + bound
                if now >= deadline:
                    self.gave_up = True
                    raise StoreError(
                        f"{self.what} unreachable for {bound:g} s ({reason}); "
                        "HARNESS_STORE_RETRY_SECONDS sets how long to wait"
                    ) from err
                attempt += 1
                wait = min(MAX_WAIT, FIRST_WAIT * 2 ** (attempt - 1), deadline - now)
                print(
                    f"waiting for {self.what} ({reason}): retry {attempt} in {wait:.1f} s, "
                    f"giving up in {deadline - now:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                _sleep(wait)
                continue
            self.gave_up = False
            return result


def _sleep(seconds: float) -> None:
    """Sleep, raising Interrupted as soon as a stop signal arrives."""
    end = time.monotonic() + seconds
    while True:
        interrupt.check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SLICE, left))


class RetryingClient:
    """An MlflowClient whose calls are retried while the tracking store is unreachable."""

    def __init__(self, client: Any, what: str):
        self._client = client
        self._retrying = Retrying(what)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._retrying.call(attribute, *args, **kwargs)

        return call


def retrying_storage(storage: Any, what: str) -> Any:
    """An Optuna storage whose calls are retried while its database is unreachable."""
    from optuna.storages import BaseStorage

    class RetryingStorage(BaseStorage):
        def __init__(self) -> None:
            self._inner = storage
            self._retrying = Retrying(what)

        def __getattr__(self, name: str) -> Any:  # what BaseStorage does not declare
            return getattr(self._inner, name)

    for name, member in vars(BaseStorage).items():
        if name.startswith("_") or not callable(member):
            continue

        def method(self: Any, *args: Any, _name: str = name, **kwargs: Any) -> Any:
            return self._retrying.call(getattr(self._inner, _name), *args, **kwargs)

        method.__name__ = name
        setattr(RetryingStorage, name, method)
    RetryingStorage.__abstractmethods__ = frozenset()
    return RetryingStorage()
