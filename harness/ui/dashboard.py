"""`harness dashboard`: optuna-dashboard on a study store, read-only.

The dashboard reads the Optuna journal of the output folder (live, as workers append to it) or
a database (`--storage`), through a storage that refuses every write: a request that would
change a study (delete, rename, tell, notes) gets an HTTP 403 and the study stays as it was.
optuna-dashboard has no read-only mode and its toasts do not say why a write failed, so its
pages also hide the controls that write and say "read-only" in a corner. A trial's list of
seed runs shows as one short line a seed (a single JSON string made the page 8,000 px wide).
It runs in this process (a threaded WSGI server), so stopping it leaves nothing behind.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bottle import HTTPError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

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


def shown_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """A trial's user attributes as the dashboard shows them: the `runs` list (each seed's
    run with all its metrics, one long JSON string) becomes a line a seed, "seed 0":
    "finished, run 137ad620...", and `mlflow_run_ids` (the same ids) is left out."""
    shown = {k: v for k, v in attrs.items() if k not in ("runs", "mlflow_run_ids")}
    for run in attrs.get("runs", []):
        reused = f", reused from trial {run['reused_from']}" if "reused_from" in run else ""
        shown[f"seed {run.get('seed')}"] = f"{run.get('status')}, run {run.get('run_id')}{reused}"
    return shown


def _shown_trial(trial: FrozenTrial) -> FrozenTrial:
    shown = copy.copy(trial)
    shown.user_attrs = shown_attrs(trial.user_attrs)
    return shown


def _shown_reader(name: str, show: Callable[[Any], Any]):
    read = _reader(name)

    def read_shown(self, *args: Any, **kwargs: Any) -> Any:
        return show(read(self, *args, **kwargs))

    read_shown.__name__ = name
    return read_shown


# Reads whose trials' user attributes are shown short (shown_attrs); the rest pass through.
SHOWN = {
    "get_trial": _shown_trial,
    "get_best_trial": _shown_trial,
    "get_all_trials": lambda trials: [_shown_trial(t) for t in trials],
    "get_trial_user_attrs": shown_attrs,
}


def _init(self, storage: BaseStorage) -> None:
    self._storage = storage


ReadOnlyStorage = type(
    "ReadOnlyStorage",
    (BaseStorage,),
    {
        "__doc__": "An Optuna storage that reads through another one and refuses every write; "
        "trials' user attributes come as the dashboard shows them (shown_attrs).",
        "__init__": _init,
        **{name: _reader(name) for name in READS},
        **{name: _shown_reader(name, SHOWN[name]) for name in SHOWN},
        **{name: _refuser(name) for name in WRITES},
    },
)

# The controls of optuna-dashboard's pages that write (MUI names its icons in data-testid):
# create, rename and delete a study, edit a note, delete an artifact, skip a trial, fail a
# running one.
HIDDEN_CONTROLS = (
    'button[aria-label="rename study"]',
    'button[aria-label="delete study"]',
    'button[aria-label="delete artifact"]',
    'button[aria-label="skip trial"]',
    'button:has(svg[data-testid="AddBoxIcon"])',
    'button:has(svg[data-testid="EditIcon"])',
    'button:has(svg[data-testid="StopCircleIcon"])',
)
READ_ONLY_NOTICE = "read-only: started by harness dashboard"
READ_ONLY_STYLE = (
    "<style>"
    + ", ".join(HIDDEN_CONTROLS)
    + " { display: none !important; }"
    + f' body::after {{ content: "{READ_ONLY_NOTICE}"; position: fixed; right: 12px;'
    " bottom: 8px; padding: 2px 8px; border-radius: 4px; font: 13px sans-serif;"
    " color: #555; background: rgba(255, 255, 255, 0.85); z-index: 2000; }"
    "</style>"
)


def read_only_pages(app: Callable) -> Callable:
    """Wrap optuna-dashboard's WSGI app so that its page (`/dashboard...`, one HTML file for
    every route) carries READ_ONLY_STYLE. Inline styles are within the page's own CSP
    (style-src 'unsafe-inline'); its scripts are not, so this is CSS alone."""

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").startswith("/dashboard"):
            return app(environ, start_response)
        # Always the whole page, never a 304 for one cached without the style.
        environ = {k: v for k, v in environ.items() if not k.startswith("HTTP_IF_")}
        answer: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            answer.update(status=status, headers=headers)
            return lambda data: None

        body_parts = app(environ, keep)
        try:
            body = b"".join(body_parts)
        finally:
            getattr(body_parts, "close", lambda: None)()
        headers = answer["headers"]
        if answer["status"].startswith("200") and b"</head>" in body:
            body = body.replace(b"</head>", READ_ONLY_STYLE.encode() + b"</head>", 1)
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "etag")]
            headers.append(("Content-Length", str(len(body))))
        start_response(answer["status"], headers)
        return [body]

    return wrapped


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

    app = read_only_pages(wsgi(storage))
    return wsgiref_server(host, port, app, server_class=Server, handler_class=Handler)
