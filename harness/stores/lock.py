"""The set-up lock: one worker creates the stores while the others wait (a lock file beside
local stores, an advisory lock in PostgreSQL), saying for whom they wait and giving up
after a while.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import interrupt
from harness.errors import StoreError
from harness.stores.layout import redact
from harness.stores.retry import Retrying

SETUP_LOCK = ".setup.lock"
LOCK_TIMEOUT_SECONDS = 120.0  # the set-up lock's default patience ($HARNESS_LOCK_TIMEOUT)
LOCK_POLL_SECONDS = 0.2
ADVISORY_KEY = (0x68726E73, 0x73657475)  # the set-up lock's key in PostgreSQL: "hrns", "setu"


def lock_timeout() -> float:
    """Seconds to wait for the set-up lock: $HARNESS_LOCK_TIMEOUT, else 120."""
    text = os.environ.get("HARNESS_LOCK_TIMEOUT", "").strip()
    if not text:
        return LOCK_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also NaN
        raise StoreError(f"HARNESS_LOCK_TIMEOUT must be a number of seconds >= 0, not {text!r}")
    return value


def name_holder(handle, text: str) -> None:
    """Put the holder's pid and host in the lock file (best effort: a full disk must not
    stop the study for a courtesy to the workers that wait)."""
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        handle.flush()
    except OSError:
        pass


def _holder(lock_file: Path) -> str:
    try:
        fields = lock_file.read_text().split()
    except OSError:
        fields = []
    if not fields:
        return "pid unknown"
    host = f" on {fields[1]}" if len(fields) > 1 and fields[1] != socket.gethostname() else ""
    return f"pid {fields[0]}{host}"


def acquire_file_lock(handle, lock_file: Path, timeout: float) -> None:
    """flock `handle`, saying once what it waits for; StoreError after `timeout` seconds."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = _holder(lock_file)
    print(
        f"waiting for the set-up lock {lock_file}, held by {holder} (up to {timeout:g} s)",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    holder = _holder(lock_file)
    raise StoreError(
        f"the set-up lock {lock_file} is still held by {holder} after {timeout:g} s: if that "
        "worker is stopped or stuck, end it and run again; or wait longer with "
        "HARNESS_LOCK_TIMEOUT=SECONDS"
    )


@contextmanager
def advisory_lock(url: str, timeout: float) -> Iterator[None]:
    """Hold the harness's set-up lock in a PostgreSQL database (an advisory lock on a
    connection of its own: a worker that dies releases it). A worker that finds it taken says
    for whom it waits; StoreError after `timeout` seconds; a stop signal ends the wait."""
    import sqlalchemy

    name = f"{os.getpid()} {socket.gethostname()}"  # the holder, as other workers name it
    engine = sqlalchemy.create_engine(
        url,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"application_name": f"harness set-up {name}"[:63]},
    )
    shown = redact(url)
    connection = Retrying(f"PostgreSQL database {shown}").call(engine.connect)
    try:
        take = sqlalchemy.text("SELECT pg_try_advisory_lock(:a, :b)")
        keys = {"a": ADVISORY_KEY[0], "b": ADVISORY_KEY[1]}
        if not connection.execute(take, keys).scalar():
            holder = _advisory_holder(connection)
            print(
                f"waiting for the set-up lock in {shown}, held by {holder} (up to {timeout:g} s)",
                file=sys.stderr,
                flush=True,
            )
            deadline = time.monotonic() + timeout
            while not connection.execute(take, keys).scalar():
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the set-up lock in {shown} is still held by "
                        f"{_advisory_holder(connection)} after {timeout:g} s: if that worker "
                        "is stopped or stuck, end it and run again; or wait longer with "
                        "HARNESS_LOCK_TIMEOUT=SECONDS"
                    )
                interrupt.check()
                time.sleep(LOCK_POLL_SECONDS)
        connection.commit()  # the lock is the session's, not the transaction's
        yield
    finally:
        connection.close()  # ends the session: the lock goes with it
        engine.dispose()


def _advisory_holder(connection: Any) -> str:
    """Who holds the set-up lock in a PostgreSQL database: `pid P on HOST` of its worker."""
    import sqlalchemy

    row = connection.execute(
        sqlalchemy.text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :a AND l.objid = :b"
        ),
        {"a": ADVISORY_KEY[0], "b": ADVISORY_KEY[1]},
    ).first()
    fields = (row[0] if row else "").removeprefix("harness set-up ").split()
    if len(fields) < 2:
        return "another connection"
    host = f" on {fields[1]}" if fields[1] != socket.gethostname() else ""
    return f"pid {fields[0]}{host}"
