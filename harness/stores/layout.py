"""Where a study's stores live: Optuna's storage (a journal file or a database URL) and
MLflow's tracking store (an SQLite database under the output folder, or a server).
"""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path

DATABASE = "mlflow.db"
JOURNAL = "optuna.journal"
POSTGRESQL = ("postgresql", "postgres")  # URL schemes (before any +driver)


def embedded_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / DATABASE).resolve()}"


def default_tracking_uri(output_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite database under the output folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    output_dir.mkdir(parents=True, exist_ok=True)
    return embedded_uri(output_dir)


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
        set_wal(path)


def set_wal(path: Path) -> None:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def tracking_name(tracking_uri: str) -> str:
    """The tracking store as a worker names it in a message (no password)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"the MLflow tracking server {redact(tracking_uri)}"
    path = sqlite_path(tracking_uri)
    return f"the tracking database {path if path else redact(tracking_uri)}"


def resolve_output_dir(output_dir: Path | None = None) -> Path:
    """The embedded stores' folder: the flag, else $HARNESS_OUTPUT_DIR, else ./outputs."""
    return Path(output_dir or os.environ.get("HARNESS_OUTPUT_DIR", "outputs"))


def redact(url: str) -> str:
    """A storage URL without its password, for printing."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
