"""The embedded tracking database: built aside and moved into place whole, so a worker
killed while MLflow creates its tables leaves no half-built database; one left by an older
version is recognised and named, with how to recover.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import socket
import sqlite3
import sys
import time
import uuid
from contextlib import closing
from functools import lru_cache
from pathlib import Path

from harness.errors import StoreError
from harness.stores.layout import set_wal

BUILDING = ".building"  # suffix of a tracking database being built aside
SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database file


# The tracking database ----------------------------------------------------------------------


def has_tables(path: Path) -> bool:
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


def build_database(path: Path, artifact_root: Path | None) -> None:
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
        set_wal(aside)  # the last connection closed: SQLite checkpoints and drops -wal, -shm
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
    """MLflow's tables and default experiment in a new database file: a copy of this MLflow
    version's empty database when one is cached, else built by MLflow's own store (all its
    migrations, seconds) and then cached for the next study."""
    root = _artifact_root_uri(artifact_root)
    template = _template_path()
    if template is not None and _copy_template(template, path, root):
        return
    _build_tables(path, root)
    if template is not None:
        _save_template(path, template)


def _artifact_root_uri(artifact_root: Path | None) -> str:
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

    return (
        artifact_root.resolve().as_uri() if artifact_root else DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    )


def _build_tables(path: Path, root: str) -> None:
    """MLflow's migrations through its own store; then its engine is disposed of and
    forgotten."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path.resolve()}"
    try:
        SqlAlchemyStore(uri, root)
    finally:
        engines = getattr(SqlAlchemyStore, "_engine_map", {})  # MLflow caches one per URI
        engine = engines.pop(uri, None)
        if engine is not None:
            engine.dispose()


def close_connections() -> None:
    """Close the connections MLflow pools to its SQL databases (one engine per URI for the
    life of the process). The last connection to an SQLite database to close checkpoints its
    log into the file, so a command leaves whole files behind (no -wal) even when it runs
    inside a longer-lived Python process; later calls open new connections."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is None:  # MLflow's SQL store never used: nothing to close
        return
    for engine in list(getattr(store.SqlAlchemyStore, "_engine_map", {}).values()):
        engine.dispose()


def _template_path() -> Path | None:
    """Where this MLflow version's empty tracking database is cached ($HARNESS_CACHE_DIR, else
    ~/.cache/harness; "off" builds every database afresh)."""
    folder = os.environ.get("HARNESS_CACHE_DIR") or str(Path.home() / ".cache" / "harness")
    if folder == "off":
        return None
    import mlflow

    return Path(folder) / f"mlflow-{mlflow.__version__}-{_schema_head()[0]}.db"


def _copy_template(template: Path, path: Path, root: str) -> bool:
    """Copy the cached empty database to `path`, its default experiment pointed at `root`;
    False (and `path` removed) if there is none or it is not whole."""
    try:
        shutil.copyfile(template, path)
        check_tracking_database(path)
        now = int(time.time() * 1000)
        with closing(_connect(path)) as db, db:
            db.execute(
                "UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                "last_update_time = ? WHERE experiment_id = 0",
                (f"{root.rstrip('/')}/0", now, now),
            )
        return True
    except (OSError, sqlite3.Error, StoreError):
        path.unlink(missing_ok=True)
        return False


def _save_template(path: Path, template: Path) -> None:
    """Cache a freshly built empty database for later studies (best effort: a cache that
    cannot be written only means the next study builds its own)."""
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f".{template.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(path, partial)
        os.replace(partial, template)
    except OSError:
        pass


def _publish(aside: Path, path: Path) -> None:
    """Move the built database to `path` unless another process made one first."""
    if path.exists():  # an empty file (a set-up killed by an older version): nothing in it
        os.replace(aside, path)
        return
    _set_aside_orphans(path)
    try:
        os.link(aside, path)  # atomic, and never over a database another worker just made
    except FileExistsError:
        return
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        os.replace(aside, path)  # a file system without hard links


def _set_aside_orphans(path: Path) -> None:
    """Rename the companions (-wal, -shm, -journal) of a database that is gone (deleted, or
    lost with its disk): SQLite would replay that log into the new database at `path`,
    putting the lost database's pages, its runs among them, into the new one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in SIDE_FILES:
        orphan = Path(str(path) + suffix)
        if orphan.exists():
            kept = orphan.with_name(f"{orphan.name}.orphaned-{stamp}")
            os.replace(orphan, kept)
            print(
                f"note: {orphan} belonged to a database that is gone: kept as {kept.name}, "
                "not replayed into the new one",
                file=sys.stderr,
            )


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
