"""Opening a study's stores: `Stores` (Optuna's storage and MLflow's tracking store, the
set-up lock over both), `open_stores` for workers and readers (a read-only folder is read
from a private copy; a study asked to write there stops at once with one line), and the
checks that the two stores agree before anything reads them."""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import StoreError
from harness.stores.journal import inspect_journal, repair_journal
from harness.stores.layout import (
    DATABASE,
    JOURNAL,
    POSTGRESQL,
    embedded_uri,
    redact,
    resolve_output_dir,
    set_wal,
    sqlite_path,
    tracking_name,
)
from harness.stores.lock import (
    SETUP_LOCK,
    acquire_file_lock,
    advisory_lock,
    lock_timeout,
    name_holder,
)
from harness.stores.retry import Retrying, RetryingClient, retrying_storage
from harness.stores.sqlite import SIDE_FILES, build_database, check_tracking_database, has_tables

# Optuna warns, whenever it builds a categorical distribution (suggesting, or replaying a
# journal), that a list among the choices (mlp's hidden widths, [500, 250]) may not persist.
# Its journal and RDB storages keep choices as JSON, where a list round-trips: a grid of hidden
# lists resumes and reports (tests/test_architectures.py).
warnings.filterwarnings("ignore", "Choices for a categorical distribution", UserWarning)

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


def open_stores(
    output_dir: Path | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    read_only: bool = False,
    tracking_only: bool = False,
) -> Stores:
    """Embedded stores under `output_dir` unless URLs (or $HARNESS_STORAGE) are given;
    with `tracking_only`, MLflow's store alone (a single tracked run: no Optuna journal).

    For writing (a study), the embedded stores' folders and files must be writable (else
    StoreError, before anything is created) and the journal is repaired if a full disk tore
    it. With `read_only`, nothing is created, locked or repaired: stores in a folder that
    is not writable are read from a private temporary copy (said on stderr)."""
    output_dir = resolve_output_dir(output_dir)
    storage = None if tracking_only else storage or os.environ.get("HARNESS_STORAGE")
    artifact_root = None
    if tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ:
        artifact_root = output_dir / "mlartifacts"
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(output_dir)
    journal = None if storage or tracking_only else output_dir / JOURNAL
    if read_only:
        return _open_for_reading(output_dir, storage, tracking_uri, artifact_root, journal)
    lock = output_dir / SETUP_LOCK if artifact_root or not (storage or tracking_only) else None
    _check_writable(output_dir, tracking_uri, journal, lock, artifact_root)
    if journal is not None:
        repair_journal(journal)
    if lock is not None or journal is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create output folder {output_dir} ({err.strerror})") from None
    if tracking_only:
        return Stores(None, tracking_uri, artifact_root, tracking_name(tracking_uri), lock)
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
        unreachable (harness.stores.retry); its tables are made on first use (under setup_lock)."""
        if not isinstance(self.storage, str):
            return self.storage
        import logging

        from optuna.storages import get_storage

        # Optuna logs a page for a lost connection before it tries another way; harness.stores.retry
        # says in one line what it waits for instead.
        logging.getLogger("optuna.storages._rdb.storage").setLevel(logging.ERROR)
        what = f"optuna storage {redact(self.storage)}"
        return retrying_storage(Retrying(what).call(get_storage, self.storage), what)

    def client(self) -> Any:
        """An MlflowClient for a worker, its calls retried while the tracking store is
        unreachable (harness.stores.retry)."""
        from mlflow.tracking import MlflowClient

        return RetryingClient(MlflowClient(self.tracking_uri), tracking_name(self.tracking_uri))

    @contextmanager
    def _file_lock(self, timeout: float) -> Iterator[None]:
        """The embedded stores' set-up lock: flock on a file naming its holder."""
        with open(self.lock_file, "a+") as handle:
            acquire_file_lock(handle, self.lock_file, timeout)
            try:
                name_holder(handle, f"{os.getpid()} {socket.gethostname()}\n")
                yield
            finally:
                name_holder(handle, "")
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
        if not has_tables(path):
            build_database(path, self.artifact_root)
        check_tracking_database(path)
        set_wal(path)  # a database made by an older version may not be in WAL mode yet
