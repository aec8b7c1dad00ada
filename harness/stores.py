"""Where a study lives: Optuna's storage (a journal file or a database URL) and MLflow's
tracking store (an SQLite database under the output folder, or a server), with their set-up.

The embedded stores survive the usual accidents of a long study:

- the tracking database is built aside and moved into place whole, so a worker killed while
  MLflow creates its tables leaves no half-built database (one left by an older version is
  recognised and named, with how to recover);
- a journal whose last record a full disk tore is cut back to its last whole record (and one
  where the next append joined such a fragment is mended), a copy of the file kept first;
- a worker that waits for the set-up lock says for whom, and gives up after a while;
- finished stores in a read-only folder can be read (from a private copy), and a study asked to
  write there stops at once with one line.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness import interrupt
from harness.errors import StoreError
from harness.retry import Retrying, RetryingClient, retrying_storage

DATABASE = "mlflow.db"
JOURNAL = "optuna.journal"
SETUP_LOCK = ".setup.lock"
LOCK_TIMEOUT_SECONDS = 120.0  # the set-up lock's default patience ($HARNESS_LOCK_TIMEOUT)
LOCK_POLL_SECONDS = 0.2
RECORD_START = b'{"op_code"'  # how Optuna begins every journal record
BUILDING = ".building"  # suffix of a tracking database being built aside
SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database file
POSTGRESQL = ("postgresql", "postgres")  # URL schemes (before any +driver)
ADVISORY_KEY = (0x68726E73, 0x73657475)  # the set-up lock's key in PostgreSQL: "hrns", "setu"


def _embedded_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / DATABASE).resolve()}"


def default_tracking_uri(output_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite database under the output folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    output_dir.mkdir(parents=True, exist_ok=True)
    return _embedded_uri(output_dir)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI (None for servers and in-memory ones)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def use_wal(tracking_uri: str) -> None:
    """Put an SQLite tracking database in write-ahead-log mode (a setting kept in the file):
    the UI and report readers then do not block the workers' writes, nor they them."""
    path = sqlite_path(tracking_uri)
    if path is not None:
        _set_wal(path)


def _set_wal(path: Path) -> None:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")


@dataclass(frozen=True)
class Stores:
    """Where a study lives: Optuna's storage and MLflow's tracking server or database."""

    storage: Any  # a URL, or an Optuna storage object
    tracking_uri: str
    artifact_root: Path | None
    description: str
    lock_file: Path | None = None  # serialises set-up of the embedded stores between workers
    read_only: bool = False  # opened for reading (perhaps from a private copy)

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"the stores ({self.description}) were opened for reading: {what}")

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Hold an exclusive lock while creating tables, experiments and the grid queue, so
        workers started together do not race: a file lock for the embedded stores, and a
        PostgreSQL advisory lock in each PostgreSQL store (workers on any machine).

        A worker that finds the lock taken says for whom it waits, and gives up with
        StoreError after $HARNESS_LOCK_TIMEOUT seconds (120)."""
        self._writable("cannot take the set-up lock")
        timeout = lock_timeout()
        with ExitStack() as locks:
            if self.lock_file is not None:
                locks.enter_context(self._file_lock(timeout))
            for url in self._postgresql():
                locks.enter_context(advisory_lock(url, timeout))
            yield

    def _postgresql(self) -> list[str]:
        """The URLs of the stores that live in PostgreSQL (Optuna's first)."""
        from sqlalchemy.engine import make_url

        urls: dict[tuple, str] = {}
        for url in (self.storage, self.tracking_uri):
            if isinstance(url, str) and url.split("+", 1)[0].split(":", 1)[0] in POSTGRESQL:
                parsed = make_url(url)  # one lock per database, however it is spelled
                urls.setdefault((parsed.host, parsed.port, parsed.database), url)
        return list(urls.values())

    def optuna_storage(self) -> Any:
        """Optuna's storage for a worker: a database's calls are retried while it is
        unreachable (harness.retry); its tables are made on first use (under setup_lock)."""
        if not isinstance(self.storage, str):
            return self.storage
        import logging

        from optuna.storages import get_storage

        # Optuna logs a page for a lost connection before it tries another way; harness.retry
        # says in one line what it waits for instead.
        logging.getLogger("optuna.storages._rdb.storage").setLevel(logging.ERROR)
        what = f"optuna storage {redact(self.storage)}"
        return retrying_storage(Retrying(what).call(get_storage, self.storage), what)

    def client(self) -> Any:
        """An MlflowClient for a worker, its calls retried while the tracking store is
        unreachable (harness.retry)."""
        from mlflow.tracking import MlflowClient

        return RetryingClient(MlflowClient(self.tracking_uri), tracking_name(self.tracking_uri))

    @contextmanager
    def _file_lock(self, timeout: float) -> Iterator[None]:
        """The embedded stores' set-up lock: flock on a file naming its holder."""
        with open(self.lock_file, "a+") as handle:
            _acquire(handle, self.lock_file, timeout)
            try:
                _name_holder(handle, f"{os.getpid()} {socket.gethostname()}\n")
                yield
            finally:
                _name_holder(handle, "")
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create_tracking_tables(self) -> None:
        """Create MLflow's tables in a new tracking database (call under the set-up lock).

        An SQLite database is built aside and moved into place whole, in WAL mode, so a
        process killed meanwhile leaves none; an existing one is checked (StoreError if an
        interrupted set-up or migration left it unusable)."""
        self._writable("cannot create tracking tables")
        path = sqlite_path(self.tracking_uri)
        if path is None:  # a server (or another database) sets itself up
            self.client().search_experiments(max_results=1)
            return
        if not _has_tables(path):
            _build_database(path, self.artifact_root)
        check_tracking_database(path)
        _set_wal(path)  # a database made by an older version may not be in WAL mode yet


STORE_FAILURES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
SQLITE_FAILURES = ("database or disk is full", "attempt to write a readonly database")


def store_failure(err: BaseException) -> str | None:
    """One line for an error that says a store cannot be written (a full disk, a read-only
    file system), wherever it surfaced (OSError, SQLite through SQLAlchemy and MLflow);
    None for any other error."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORE_FAILURES:
            where = f" ({seen.filename})" if seen.filename else ""
            return f"{STORE_FAILURES[seen.errno]}{where}: {seen.strerror}"
        failure = next((text for text in SQLITE_FAILURES if text in str(seen)), None)
        if failure is not None:
            return f"the tracking database cannot be written: {failure}"
        seen = seen.__cause__ or seen.__context__
    return None


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


def _name_holder(handle, text: str) -> None:
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


def _acquire(handle, lock_file: Path, timeout: float) -> None:
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


def tracking_name(tracking_uri: str) -> str:
    """The tracking store as a worker names it in a message (no password)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"the MLflow tracking server {redact(tracking_uri)}"
    path = sqlite_path(tracking_uri)
    return f"the tracking database {path if path else redact(tracking_uri)}"


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


# The tracking database ----------------------------------------------------------------------


def _has_tables(path: Path) -> bool:
    """Does the database file exist with at least one table in it?"""
    if not path.exists() or path.stat().st_size == 0:
        return False
    try:
        with closing(_connect(path)) as db:
            return db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    except sqlite3.DatabaseError:
        return True  # not an empty database: check_tracking_database says what it is


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to an existing database file (never creates one)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)


def _build_database(path: Path, artifact_root: Path | None) -> None:
    """Create MLflow's tables in a new file beside `path`, in WAL mode, every connection to it
    closed, then move it into place: only if `path` is still missing (or still empty)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path)
    aside = folder / f".{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    aside = aside.with_name(aside.name + BUILDING)
    try:
        _create_tables(aside, artifact_root)
        _set_wal(aside)  # the last connection closed: SQLite checkpoints and drops -wal, -shm
        left = [aside.name + s for s in SIDE_FILES if Path(str(aside) + s).exists()]
        if left:
            raise StoreError(f"building the tracking database {path} left {left} open")
        with open(aside, "rb") as built:
            os.fsync(built.fileno())
        _publish(aside, path)
        _fsync_folder(folder)
    except (OSError, sqlite3.Error, SQLAlchemyError, MlflowException) as err:
        # a full disk, say: one line, not MLflow's page of traceback
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise StoreError(f"cannot create the tracking database {path}: {reason}") from err
    finally:
        for name in (aside, *(Path(str(aside) + s) for s in SIDE_FILES)):
            name.unlink(missing_ok=True)


def _create_tables(path: Path, artifact_root: Path | None) -> None:
    """MLflow's tables (all its migrations) and default experiment in a new database file,
    through MLflow's own store; then its engine is disposed of and forgotten."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path.resolve()}"
    root = (
        artifact_root.resolve().as_uri() if artifact_root else DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    )
    try:
        SqlAlchemyStore(uri, root)
    finally:
        engines = getattr(SqlAlchemyStore, "_engine_map", {})  # MLflow caches one per URI
        engine = engines.pop(uri, None)
        if engine is not None:
            engine.dispose()


def _publish(aside: Path, path: Path) -> None:
    """Move the built database to `path` unless another process made one first."""
    if path.exists():  # an empty file (a set-up killed by an older version): nothing in it
        os.replace(aside, path)
        return
    try:
        os.link(aside, path)  # atomic, and never over a database another worker just made
    except FileExistsError:
        return
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        os.replace(aside, path)  # a file system without hard links


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove_stale_builds(path: Path) -> None:
    """Delete databases that processes of this host, now gone, were building aside."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{8}}")
    for leftover in path.parent.glob(f".{path.name}.*{BUILDING}*"):
        match = pattern.match(leftover.name.split(BUILDING)[0])
        if match is None or match["host"] != socket.gethostname():
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except PermissionError:
            pass


@lru_cache(maxsize=1)
def _schema_head() -> tuple[str, frozenset[str]]:
    """MLflow's current schema revision and the tables it expects."""
    from mlflow.store.db import utils

    return utils._get_latest_schema_revision(), frozenset(utils.Base.metadata.tables)


def check_tracking_database(path: Path) -> None:
    """StoreError, saying how to recover, if the tracking database is not one MLflow can use
    as it is: damaged pages (SQLite's quick_check), or a set-up or migration interrupted
    (leftover `_alembic_tmp_` tables, tables missing, or a schema revision not MLflow's)."""
    try:
        with closing(_connect(path)) as db:
            damage = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            if damage != ["ok"]:
                raise _damaged(path, "\n".join(damage))
            tables = {
                name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            version = None
            if "alembic_version" in tables:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as err:
        if "malformed" in str(err) or "not a database" in str(err):
            raise _damaged(path, str(err)) from None
        raise StoreError(
            f"tracking database {path} cannot be read ({err}): move it (and any "
            f"{path.name}-wal, -shm beside it) aside, then run again"
        ) from None
    head, expected = _schema_head()
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    missing = sorted(expected - tables)
    if leftovers:
        problem = f"leftover table {leftovers[0]}"
    elif missing:
        problem = f"{len(missing)} tables missing, e.g. {missing[0]}"
    elif version != head:
        problem = f"schema revision {version}, MLflow's is {head}"
    else:
        return
    if runs == 0:
        raise StoreError(
            f"tracking database {path} was left half-built by an interrupted first run "
            f"({problem}) and holds no runs: delete it (and {path.name}-wal, {path.name}-shm "
            "if there), then run again"
        )
    raise StoreError(
        f"tracking database {path} is not in a state MLflow can use ({problem}) and holds "
        f"{runs} runs: back it up, then try `mlflow db upgrade sqlite:///{path.resolve()}`"
    )


def _damaged(path: Path, problem: str) -> StoreError:
    """The error for a tracking database whose pages are damaged, with the ways back."""
    lines = [line for line in problem.splitlines() if line and not line.startswith("***")]
    problem = lines[0][:200] if lines else "damaged"  # quick_check heads its list with ***
    return StoreError(
        f"tracking database {path} is damaged (SQLite: {problem}); nothing was written: "
        f"copy it aside, then recover its runs with `sqlite3 {shlex.quote(str(path))} .recover "
        "| sqlite3 recovered.db` and put recovered.db in its place, or start again in a new "
        "--output-dir"
    )


# The two stores together --------------------------------------------------------------------


def check_pair(study: Any, client: Any, experiment: str, stores: Stores) -> None:
    """StoreError if the study's trials name MLflow runs that the tracking store does not
    have (one of the stores lost, or replaced by another): a rerun or a report would then
    contradict the trials. Runs deleted in MLflow's UI still exist and count as there."""
    from mlflow.entities import ViewType

    named: dict[str, int] = {}  # run id -> trial number
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        parent = [attrs["mlflow_parent_run_id"]] if attrs.get("mlflow_parent_run_id") else []
        for run_id in parent + list(attrs.get("mlflow_run_ids", [])):
            named[run_id] = trial.number
    if not named:
        return
    found = client.get_experiment_by_name(experiment)
    have: set[str] = set()
    token = None
    while found is not None:
        page = client.search_runs(
            [found.experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token
        )
        have.update(run.info.run_id for run in page)
        token = page.token
        if not token:
            break
    missing = [run_id for run_id in named if run_id not in have]
    if missing:
        trials = len({named[run_id] for run_id in missing})
        raise StoreError(
            f"the stores disagree: {trials} trials of study '{experiment}' in "
            f"{stores.description} name {len(missing)} MLflow runs that "
            f"{tracking_name(stores.tracking_uri)} does not have (lost or replaced?): "
            "restore that store from a backup, or run the study again in a new --output-dir"
        )


def check_stores_agree(stores: Stores, name: str) -> None:
    """For a reader: check_pair on study `name`, if the Optuna storage has it."""
    import optuna
    from mlflow.tracking import MlflowClient

    try:
        study = optuna.load_study(study_name=name, storage=stores.storage)
    except KeyError:
        return
    check_pair(study, MlflowClient(stores.tracking_uri), name, stores)


# The Optuna journal -------------------------------------------------------------------------


def _torn_bytes(path: Path) -> int:
    """How many bytes follow the journal's last end of line (a torn last record)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        position = size
        while position > 0:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return size - (position + newline + 1)
        return size


def _bad_lines(path: Path, end: int) -> list[tuple[int, bytes]]:
    """(line number, line) of the whole lines before byte `end` that are not JSON records."""
    bad = []
    with open(path, "rb") as handle:
        read = 0
        for number, line in enumerate(handle, start=1):
            read += len(line)
            if read > end:
                break
            if _plainly_whole(line):
                continue
            try:
                json.loads(line)
            except ValueError:
                bad.append((number, line))
    return bad


def _plainly_whole(line: bytes) -> bool:
    """The shape of one whole record (what parsing would confirm, at a fraction of its cost):
    a torn fragment joined to a record starts or goes on with a second `{"op_code"`."""
    return (
        line.startswith(RECORD_START) and line.endswith(b"}\n") and line.find(RECORD_START, 1) < 0
    )


def _is_record(text: bytes) -> bool:
    try:
        record = json.loads(text)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _mend(line: bytes) -> bytes | None:
    """A line where an append joined a torn record's fragment to a whole record: the whole
    record (from its `{"op_code"`), else None."""
    body = line.rstrip(b"\r\n")
    start = body.rfind(RECORD_START)
    while start > 0:
        fragment, record = body[:start], body[start:]
        if fragment[: len(RECORD_START)] == RECORD_START[: len(fragment)] and _is_record(record):
            return record + b"\n"
        start = body.rfind(RECORD_START, 0, start)
    return None


def _unmendable(path: Path, number: int) -> StoreError:
    return StoreError(
        f"optuna journal {path} line {number} is not a valid record, nor a torn one joined to "
        "a whole one: keep a copy, then delete that line (or restore a backup) and run again"
    )


def _backup(path: Path) -> Path:
    """Copy the journal to optuna.journal.torn-<UTC time> beside it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    backup = path.with_name(f"{path.name}.torn-{stamp}")
    count = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.torn-{stamp}-{count}")
        count += 1
    try:
        shutil.copyfile(path, backup)
        with open(backup, "rb") as copy:
            os.fsync(copy.fileno())
    except OSError as err:
        backup.unlink(missing_ok=True)
        raise StoreError(
            f"optuna journal {path} needs mending but no copy of it can be kept beside it "
            f"({err.strerror}): free some space and run again"
        ) from None
    return backup


def repair_journal(path: Path) -> None:
    """Before writing to a journal: under Optuna's journal lock, cut a torn last record (a
    full disk) and mend lines where an append joined such a fragment to a whole record; the
    file as it was is kept beside it first. StoreError if a line cannot be mended."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.exists() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))  # the one JournalFileBackend takes to append
    lock.acquire()
    try:
        _repair_locked(path)
    finally:
        lock.release()


def _repair_locked(path: Path) -> None:
    size = path.stat().st_size
    torn = _torn_bytes(path)
    bad = _bad_lines(path, size - torn)
    mended = {}
    for number, line in bad:
        record = _mend(line)
        if record is None:
            raise _unmendable(path, number)
        mended[number] = record
    if not torn and not mended:
        return
    backup = _backup(path)
    try:
        if mended:
            _rewrite(path, size - torn, mended)
        else:
            with open(path, "r+b") as handle:
                handle.truncate(size - torn)
                os.fsync(handle.fileno())
    except (OSError, StoreError) as err:
        backup.unlink(missing_ok=True)  # the journal is as it was: no copy needed
        if isinstance(err, StoreError):
            raise
        raise StoreError(f"optuna journal {path} could not be cut back ({err.strerror})") from None
    done = []
    if torn:
        done.append(f"cut its torn last record ({torn} bytes without an end of line)")
    if mended:
        lines = ", ".join(str(n) for n in mended)
        done.append(f"kept the whole record of line {lines} (a torn one was joined to it)")
    print(
        f"repaired optuna journal {path}: {'; '.join(done)}; the file as it was is {backup}",
        file=sys.stderr,
        flush=True,
    )


def _rewrite(path: Path, end: int, mended: dict[int, bytes]) -> None:
    """Write the journal's first `end` bytes with lines replaced, then move it into place."""
    new = path.with_name(path.name + ".mending")
    try:
        with open(path, "rb") as source, open(new, "wb") as target:
            read = 0
            for number, line in enumerate(source, start=1):
                read += len(line)
                if read > end:
                    break
                target.write(mended.get(number, line))
            target.flush()
            os.fsync(target.fileno())
        shutil.copymode(path, new)
        os.replace(new, path)
    except OSError as err:
        new.unlink(missing_ok=True)
        raise StoreError(f"optuna journal {path} could not be mended ({err.strerror})") from None


def inspect_journal(path: Path, shown: Path | None = None) -> None:
    """For a reader: say on stderr that a torn last record is ignored; StoreError for lines
    that a writer (`harness study`) would mend or cannot. Changes nothing."""
    shown = shown or path
    if not path.exists():
        return
    torn = _torn_bytes(path)
    for pause in (0.1, 0.5):  # a live writer's record, half written when we looked?
        if not torn:
            break
        time.sleep(pause)
        torn = _torn_bytes(path)
    for number, line in _bad_lines(path, path.stat().st_size - torn):
        if _mend(line) is None:
            raise _unmendable(shown, number)
        raise StoreError(
            f"optuna journal {shown} line {number} joins a torn record to the next one: "
            "`harness study` on that folder, with write access, mends it (keeping a copy)"
        )
    if torn:
        print(
            f"optuna journal {shown}: its last record is torn ({torn} bytes without an end of "
            "line, e.g. a full disk) and is ignored; `harness study` there cuts it off",
            file=sys.stderr,
            flush=True,
        )


# Opening ------------------------------------------------------------------------------------


def resolve_output_dir(output_dir: Path | None = None) -> Path:
    """The embedded stores' folder: the flag, else $HARNESS_OUTPUT_DIR, else ./outputs."""
    return Path(output_dir or os.environ.get("HARNESS_OUTPUT_DIR", "outputs"))


def open_stores(
    output_dir: Path | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    read_only: bool = False,
) -> Stores:
    """Embedded stores under `output_dir` unless URLs (or $HARNESS_STORAGE) are given.

    For writing (a study), the embedded stores' folders and files must be writable (else
    StoreError, before anything is created) and the journal is repaired if a full disk tore
    it. With `read_only`, nothing is created, locked or repaired: stores in a folder that
    is not writable are read from a private temporary copy (said on stderr)."""
    output_dir = resolve_output_dir(output_dir)
    storage = storage or os.environ.get("HARNESS_STORAGE")
    artifact_root = None
    if tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ:
        artifact_root = output_dir / "mlartifacts"
    tracking_uri = (
        tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _embedded_uri(output_dir)
    )
    journal = None if storage else output_dir / JOURNAL
    if read_only:
        return _open_for_reading(output_dir, storage, tracking_uri, artifact_root, journal)
    lock = output_dir / SETUP_LOCK if artifact_root or not storage else None
    _check_writable(output_dir, tracking_uri, journal, lock, artifact_root)
    if journal is not None:
        repair_journal(journal)
    if lock is not None or journal is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create output folder {output_dir} ({err.strerror})") from None
    if storage:
        return Stores(storage, tracking_uri, artifact_root, f"optuna {redact(storage)}", lock)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return Stores(
        JournalStorage(JournalFileBackend(str(journal))), tracking_uri, artifact_root,
        f"optuna {journal}", lock,
    )  # fmt: skip


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _local_files(tracking_uri: str, journal: Path | None) -> list[Path]:
    """The files of the local stores: journal, database and its companions."""
    files = [journal] if journal is not None else []
    database = sqlite_path(tracking_uri)
    if database is not None:
        files += [database, *(Path(str(database) + s) for s in SIDE_FILES)]
    return files


def _check_writable(
    output_dir: Path,
    tracking_uri: str,
    journal: Path | None,
    lock: Path | None,
    artifact_root: Path | None,
) -> None:
    """StoreError unless the study can write every local store (nothing is created here)."""
    folders = [output_dir] if journal or lock or artifact_root else []
    database = sqlite_path(tracking_uri)
    if database is not None and database.parent.absolute() != output_dir.absolute():
        folders.append(database.parent)
    for folder in folders:
        existing = _nearest_existing(folder)
        if not _writable(existing):
            if existing == folder.absolute():
                raise StoreError(
                    f"output folder {folder} is read-only: a study writes its stores there "
                    "(`harness report` can read them as they are)"
                )
            raise StoreError(f"cannot create output folder {folder}: {existing} is read-only")
    for path in [*_local_files(tracking_uri, journal), lock, artifact_root]:
        if path is not None and path.exists() and not _writable(path):
            raise StoreError(
                f"output folder {path.parent} is read-only: {path.name} there cannot be written "
                "(`harness report` can read it as it is)"
            )


def _open_for_reading(
    output_dir: Path,
    storage: str | None,
    tracking_uri: str,
    artifact_root: Path | None,
    journal: Path | None,
) -> Stores:
    """Stores to read: in place where writable, else from a private copy; missing ones are
    private and empty, so reading never creates anything in the output folder."""
    database = sqlite_path(tracking_uri)
    folders = {p.parent.absolute() for p in (journal, database) if p is not None}
    files = _local_files(tracking_uri, journal)
    locked = [p for p in (*sorted(folders), *files) if p.exists() and not _writable(p)]
    private: list[Path] = []

    def private_dir() -> Path:
        if not private:
            private.append(Path(tempfile.mkdtemp(prefix="harness-stores-")))
            atexit.register(shutil.rmtree, private[0], ignore_errors=True)
        return private[0]

    copied = False
    if database is not None:
        if not database.exists():
            tracking_uri = f"sqlite:///{private_dir() / DATABASE}"
        else:
            if locked:
                target = private_dir() / DATABASE
                for suffix in ("", "-wal", "-journal"):  # -shm is rebuilt from the -wal
                    source = Path(str(database) + suffix)
                    if source.exists():
                        shutil.copyfile(source, str(target) + suffix)
                tracking_uri, copied = f"sqlite:///{target}", True
            check_tracking_database(sqlite_path(tracking_uri))
    description = f"optuna {redact(storage)}" if storage else f"optuna {journal}"
    if journal is not None:
        source = journal
        if not journal.exists():
            source = private_dir() / JOURNAL
            source.touch()
        elif locked:
            source = private_dir() / JOURNAL
            shutil.copyfile(journal, source)
            copied = True
        inspect_journal(source, shown=journal)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(source)))
    if copied:
        print(
            f"{locked[0]} is read-only: reading a private copy of the stores ({private[0]})",
            file=sys.stderr,
            flush=True,
        )
    return Stores(storage, tracking_uri, artifact_root, description, None, read_only=True)


def redact(url: str) -> str:
    """A storage URL without its password, for printing."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
