"""harness.retry on its own: which errors mean "unreachable", the bound, the lines, a stop
signal while waiting (the real faults: tests/test_scale_out.py)."""

import os
import signal
import sqlite3
import threading
import time
from contextlib import closing

import pytest

from harness import interrupt
from harness.errors import StoreError
from harness.stores.retry import Retrying, retry_seconds, transient


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("(psycopg.OperationalError) the database system is shutting down", "shutting down"),
        ("terminating connection due to administrator command", "administrator command"),
        ("FATAL:  sorry, too many clients already", "too many clients already"),
        (
            "API request to http://h/api failed with exception HTTPConnectionPool(host='h', "
            "port=1): Max retries exceeded with url: /x (Caused by NewConnectionError(...: "
            "[Errno 111] Connection refused'))",
            "connection refused",
        ),  # fmt: skip
        ("(sqlite3.OperationalError) database is locked", "database is locked"),
    ],
)
def test_unreachable_stores_are_told_by_their_errors(text, reason):
    assert reason in transient(RuntimeError(text))


def test_other_errors_are_not_retried():
    for text in ("database or disk is full", "UNIQUE constraint failed", "no such table: runs"):
        assert transient(RuntimeError(text)) is None
    calls = []

    def fails():
        calls.append(1)
        raise RuntimeError("UNIQUE constraint failed")

    with pytest.raises(RuntimeError):
        Retrying("the store").call(fails)
    assert calls == [1]


def test_retries_say_what_they_wait_for_and_give_up_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_STORE_RETRY_SECONDS", "1")
    retrying = Retrying("the tracking database X")
    calls = []

    def refused():
        calls.append(time.monotonic())
        raise ConnectionError("[Errno 111] Connection refused")

    with pytest.raises(StoreError, match=r"^the tracking database X unreachable for 1 s "):
        retrying.call(refused)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        "waiting for the tracking database X (connection refused): retry 1 in 0.5 s, "
        "giving up in 1 s"
    )
    assert len(lines) == len(calls) - 1 >= 2 and calls[-1] - calls[0] < 1.5
    with pytest.raises(ConnectionError):  # once given up: tried once, at once
        retrying.call(refused)
    assert capsys.readouterr().err == ""
    assert retrying.call(lambda: 7) == 7 and not retrying.gave_up  # back


def test_a_write_waits_for_an_sqlite_lock_another_worker_holds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_STORE_RETRY_SECONDS", "10")
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as holder:
        holder.execute("CREATE TABLE tags (value TEXT)")
        holder.execute("BEGIN IMMEDIATE")  # another worker in the middle of a write
        threading.Timer(0.8, holder.execute, ("COMMIT",)).start()
        with closing(sqlite3.connect(path, timeout=0.1, isolation_level=None)) as db:
            Retrying("the tracking database").call(db.execute, "INSERT INTO tags VALUES ('x')")
            assert db.execute("SELECT value FROM tags").fetchall() == [("x",)]
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("waiting for the tracking database (database is locked): retry 1 in")


def test_a_stop_signal_ends_the_wait_at_once():
    before = {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS}
    interrupt.install()
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()

        def refused():
            raise ConnectionError("Connection refused")

        with pytest.raises(interrupt.Interrupted):
            Retrying("the store").call(refused)
        assert time.monotonic() - started < 1
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        interrupt._received = None


def test_the_bound_must_be_a_number(monkeypatch):
    monkeypatch.setenv("HARNESS_STORE_RETRY_SECONDS", "soon")
    with pytest.raises(StoreError, match="HARNESS_STORE_RETRY_SECONDS must be a number"):
        retry_seconds()
