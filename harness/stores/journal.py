"""Optuna's journal file: a last record a full disk tore is cut back to its last whole record
(and one where the next append joined such a fragment is mended), a copy kept first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import StoreError

RECORD_START = b'{"op_code"'  # how Optuna begins every journal record


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
