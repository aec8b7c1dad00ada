"""Where a study lives: Optuna's storage (a journal file or a database URL) and MLflow's
tracking store (an SQLite database under the output folder, or a server), with their set-up.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna


def default_tracking_uri(output_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite database under the output folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    output_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def use_wal(tracking_uri: str) -> None:
    """Put an SQLite tracking database in write-ahead-log mode (a setting kept in the file):
    the UI and report readers then do not block the workers' writes, nor they them."""
    if tracking_uri.startswith("sqlite:///"):
        with sqlite3.connect(tracking_uri.removeprefix("sqlite:///"), timeout=30) as db:
            db.execute("PRAGMA journal_mode=WAL")


@dataclass(frozen=True)
class Stores:
    """Where a study lives: Optuna's storage and MLflow's tracking server or database."""

    storage: Any  # a URL, or an Optuna storage object
    tracking_uri: str
    artifact_root: Path | None
    description: str
    lock_file: Path | None = None  # serialises set-up of the embedded stores between workers

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Hold an exclusive lock while creating tables, experiments and the grid queue, so
        workers started together on one machine do not race (a no-op for servers)."""
        if self.lock_file is None:
            yield
            return
        with open(self.lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create_tracking_tables(self) -> None:
        """Create MLflow's tables in a new tracking database (call under the set-up lock)."""
        from mlflow.tracking import MlflowClient

        MlflowClient(self.tracking_uri).search_experiments(max_results=1)
        use_wal(self.tracking_uri)


def resolve_output_dir(output_dir: Path | None = None) -> Path:
    """The embedded stores' folder: the flag, else $HARNESS_OUTPUT_DIR, else ./outputs."""
    return Path(output_dir or os.environ.get("HARNESS_OUTPUT_DIR", "outputs"))


def open_stores(
    output_dir: Path | None = None, storage: str | None = None, tracking_uri: str | None = None
) -> Stores:
    """Embedded stores under `output_dir` unless URLs (or $HARNESS_STORAGE) are given."""
    output_dir = resolve_output_dir(output_dir)
    storage = storage or os.environ.get("HARNESS_STORAGE")
    artifact_root = None
    if tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ:
        artifact_root = output_dir / "mlartifacts"
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    lock = output_dir / ".setup.lock" if artifact_root or not storage else None
    if lock is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    if storage:
        return Stores(storage, tracking_uri, artifact_root, f"optuna {_redact(storage)}", lock)
    journal = output_dir / "optuna.journal"
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    return Stores(
        optuna.storages.JournalStorage(backend), tracking_uri, artifact_root,
        f"optuna {journal}", lock,
    )  # fmt: skip


def _redact(url: str) -> str:
    """A storage URL without its password, for printing."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
