"""Which errors mean a store failed (full disk, read-only database, lost server), so a run
reports them in one line instead of as a training failure.
"""

from __future__ import annotations

import errno

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
