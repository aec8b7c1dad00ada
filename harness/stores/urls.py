"""Store URLs checked before anything opens them: a scheme each store accepts, a driver that
is installed, one line naming what is wrong.
"""

from __future__ import annotations

import os

from harness.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Store URLs, checked before any store is opened (a bad one would otherwise fail deep inside
# Optuna or MLflow with a long traceback, after the output folder was made).


def _check_optuna_storage(url: str, source: str) -> None:
    from sqlalchemy import dialects, exc
    from sqlalchemy.engine import make_url

    try:
        dialect = make_url(url).get_dialect()  # parses the URL, loads the dialect; no connection
    except (exc.ArgumentError, exc.NoSuchModuleError, ValueError) as err:
        scheme = url.partition("://")[0] if "://" in url else url  # the password stays unsaid
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"{source}: '{scheme}' is not an Optuna storage ({reason}; allowed: SQLAlchemy URLs "
            f"DIALECT[+DRIVER]://..., DIALECT one of {', '.join(dialects.__all__)}, "
            "e.g. postgresql://user@host/db or sqlite:///path.db)"
        ) from None
    _check_driver(dialect, source)


def _check_driver(dialect, source: str) -> None:
    """ConfigError if the database driver of a SQLAlchemy dialect is not installed (the
    PostgreSQL ones are the `postgres` extra of the package)."""
    try:
        dialect.import_dbapi()
    except ImportError as err:
        name = f"{dialect.name}+{dialect.driver}"
        fix = (
            "pip install '.[postgres]' (make install does)"
            if dialect.name == "postgresql"
            else f"install the Python package of the {dialect.driver} driver"
        )
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"{source}: the database driver of {name} is not installed ({reason}): {fix}"
        ) from None


def _check_tracking_uri(uri: str, source: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    from mlflow.utils.uri import get_uri_scheme

    # MLflow's own table of tracking stores ("" is a plain path); Unity Catalog's entries
    # only raise "not supported".
    schemes = [s for s in _tracking_store_registry._registry if s not in ("uc", "databricks-uc")]
    try:
        scheme = uri if uri == "databricks" else get_uri_scheme(uri)
    except MlflowException:  # e.g. postgresqlx://: a database MLflow does not know
        scheme = None
    if scheme not in schemes:
        shown = uri.partition("://")[0] if "://" in uri else uri  # the password stays unsaid
        names = ", ".join("a plain path" if s == "" else f"{s}:" for s in schemes)
        raise ConfigError(
            f"{source}: '{shown}' is not an MLflow tracking URI (allowed: {names}; "
            "databases as DIALECT[+DRIVER]://...)"
        )
    from mlflow.store.db.db_types import DATABASE_ENGINES

    if scheme in DATABASE_ENGINES:  # MLflow opens it with SQLAlchemy: its driver is needed
        from sqlalchemy import exc
        from sqlalchemy.engine import make_url

        try:
            dialect = make_url(uri).get_dialect()
        except (exc.ArgumentError, exc.NoSuchModuleError, ValueError):
            return  # MLflow says what is wrong with it
        _check_driver(dialect, source)


def check_store_urls(
    storage: str | None = None,
    tracking_uri: str | None = None,
    *,
    optuna: bool = True,
    tracking: bool = True,
) -> None:
    """Refuse an Optuna storage or MLflow tracking URI that cannot work (its database driver
    missing, say), from the flags or, when a flag is absent, the environment
    ($HARNESS_STORAGE, $MLFLOW_TRACKING_URI), as stores.open_stores would take them.
    `optuna=False`, `tracking=False`: the command has no Optuna storage, no MLflow store."""
    if optuna:
        source = "--storage" if storage else "$HARNESS_STORAGE"
        storage = storage or os.environ.get("HARNESS_STORAGE")
        if storage:
            _check_optuna_storage(storage, source)
    if not tracking:
        return
    source = "--tracking-uri" if tracking_uri else "$MLFLOW_TRACKING_URI"
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        _check_tracking_uri(tracking_uri, source)
