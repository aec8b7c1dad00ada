"""`harness dashboard`: optuna-dashboard on a study store, read-only.

The dashboard reads the Optuna journal of the output folder (live, as workers append to it) or
a database (`--storage`), through a storage that refuses every write: its buttons that would
change a study (delete, rename, tell, notes) get an HTTP 403 and the study stays as it was.
It runs in this process (a threaded WSGI server), so stopping it leaves nothing behind.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from bottle import HTTPError
from optuna.storages import BaseStorage

from harness.errors import StoreError
from harness.stores.layout import JOURNAL, resolve_output_dir, sqlite_path
from harness.stores.opening import open_stores

# Every public method of Optuna's BaseStorage, sorted into those that only read and those that
# write (tests/test_dashboard.py checks that none is left out).
READS = (
    "check_trial_is_updatable", "get_all_studies", "get_all_trials", "get_best_trial",
    "get_n_trials", "get_study_directions", "get_study_id_from_name", "get_study_name_from_id",
    "get_study_system_attrs", "get_study_user_attrs", "get_trial",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
    "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs", "remove_session",
)  # fmt: skip
WRITES = (
    "create_new_study", "create_new_trial", "delete_study", "set_study_system_attr",
    "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
    "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr",
)  # fmt: skip


class ReadOnlyError(HTTPError):
    """A write through the dashboard: 403, which optuna-dashboard's API passes on as the
    reason of the failed request."""

    def __init__(self, what: str):
        super().__init__(403, f"the harness dashboard is read-only ({what} refused)")


def _reader(name: str):
    def read(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._storage, name)(*args, **kwargs)

    read.__name__ = name
    return read


def _refuser(name: str):
    def refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise ReadOnlyError(name)

    refuse.__name__ = name
    return refuse


def _init(self, storage: BaseStorage) -> None:
    self._storage = storage


ReadOnlyStorage = type(
    "ReadOnlyStorage",
    (BaseStorage,),
    {
        "__doc__": "An Optuna storage that reads through another one and refuses every write.",
        "__init__": _init,
        **{name: _reader(name) for name in READS},
        **{name: _refuser(name) for name in WRITES},
    },
)


def open_storage(output_dir: Path | None, storage_url: str | None) -> tuple[BaseStorage, str]:
    """The study store to show, read-only, and its description: `storage_url` (or
    $HARNESS_STORAGE) opened without creating tables, else the output folder's journal (a
    private copy if the folder is read-only). StoreError if there is nothing to show."""
    # The dashboard reads no MLflow store: an in-memory URI keeps open_stores off it.
    stores = open_stores(output_dir, storage_url, "sqlite:///:memory:", read_only=True)
    storage = stores.storage
    if isinstance(storage, str):
        storage = _database(storage, stores.description)
    else:
        journal = resolve_output_dir(output_dir) / JOURNAL
        if not journal.is_file():
            raise StoreError(
                f"no Optuna journal at {journal}: run a study first, or point --output-dir "
                "or --storage at its stores"
            )
    return ReadOnlyStorage(storage), stores.description


def _database(url: str, description: str) -> BaseStorage:
    """An RDBStorage on an existing database: nothing created (no tables, no SQLite file)."""
    from optuna.exceptions import OptunaError
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no Optuna database at {path}")
    try:
        return RDBStorage(url, skip_compatibility_check=False, skip_table_creation=True)
    except (SQLAlchemyError, OptunaError, RuntimeError) as err:
        cause = err.__cause__ if isinstance(err, OptunaError) and err.__cause__ else err
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise StoreError(f"cannot read {description}: {reason}") from None


def make_server(storage: BaseStorage, host: str, port: int):
    """optuna-dashboard's WSGI app on a threaded server bound to host:port (not yet serving);
    requests are not logged."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as wsgiref_server

    from optuna_dashboard import wsgi

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    server_family = family[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = server_family
        daemon_threads = True  # a request still open never holds up the end

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
            pass

    return wsgiref_server(host, port, wsgi(storage), server_class=Server, handler_class=Handler)
