"""Stores checked before use: a tracking database with damaged pages, and a pair of stores
that disagree (the journal's trials name MLflow runs that are gone). `study`, `report` and
`compare` each stop with one line, exit 1, and write nothing."""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from harness.cli import main
from harness.stores.sqlite import check_tracking_database
from tests.helpers import run_cli, write_study

PAGE = 4096


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_dir) -> tuple[Path, Path]:
    """A finished study (two configurations, two seeds) in embedded stores: (file, folder)."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_study(folder, "done", space={"beta": [0.8, 0.9]}, seeds=2)
    out = folder / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    return path, out


def copy_stores(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished[1], out)
    return out


def damage(database: Path, pages: int) -> None:
    """Overwrite `pages` pages in the middle of an SQLite file, as a bad disk or a stray
    write would."""
    count = database.stat().st_size // PAGE
    with open(database, "r+b") as handle:
        for page in range(count // 2, count // 2 + pages):
            handle.seek(page * PAGE)
            handle.write(bytes(range(256)) * (PAGE // 256))


def integrity(database: Path) -> str:
    try:
        with closing(sqlite3.connect(database)) as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as err:
        return str(err)


def commands(path: Path, out: Path, tmp_path: Path, mnist_dir: Path) -> dict[str, list[str]]:
    where = ["--output-dir", str(out)]
    reports = ["--reports-dir", str(tmp_path / "reports")]
    return {
        "study": ["study", str(path), *where, "--data-dir", str(mnist_dir)],
        "report": ["report", str(path), *where, *reports],
        "compare": ["compare", str(path), str(path), *where, *reports],
    }


@pytest.mark.mnist
@pytest.mark.processes
@pytest.mark.parametrize("pages", [3, 40])
def test_a_damaged_tracking_database_stops_every_command_in_one_line(
    finished, tmp_path, mnist_dir, capsys, pages
):
    out = copy_stores(finished, tmp_path)
    database = out / "mlflow.db"
    damage(database, pages)
    assert integrity(database) != "ok"  # damaged indeed
    before = database.read_bytes()
    another = write_study(tmp_path, "another", space={"beta": [0.7]})  # a new study there
    runs = commands(finished[0], out, tmp_path, mnist_dir)
    runs["new study"] = ["study", str(another), "--output-dir", str(out)]
    for name, args in runs.items():
        assert main(args) == 1, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (name, err)
        assert re.fullmatch(
            rf"error: tracking database {re.escape(str(database))} is damaged \(SQLite: .+\); "
            rf"nothing was written: copy it aside, then recover its runs with `sqlite3 "
            rf"{re.escape(str(database))} \.recover \| sqlite3 recovered\.db` and put "
            r"recovered\.db in its place, or start again in a new --output-dir\n",
            err,
        ), err
    assert database.read_bytes() == before
    assert not (tmp_path / "reports").exists()


@pytest.mark.mnist
@pytest.mark.processes
def test_a_whole_tracking_database_passes_the_check_in_milliseconds(finished, tmp_path):
    out = copy_stores(finished, tmp_path)
    check_tracking_database(out / "mlflow.db")  # whole: no error
    started = time.perf_counter()
    for _ in range(10):
        check_tracking_database(out / "mlflow.db")
    assert (time.perf_counter() - started) / 10 < 0.25  # milliseconds, in fact


@pytest.mark.mnist
@pytest.mark.processes
def test_a_lost_tracking_database_is_a_broken_pair_of_stores(finished, tmp_path, mnist_dir, capsys):
    out = copy_stores(finished, tmp_path)
    (out / "mlflow.db").unlink()
    for name, args in commands(finished[0], out, tmp_path, mnist_dir).items():
        assert main(args) == 1, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (name, err)
        assert re.fullmatch(
            r"error: the stores disagree: 2 trials of study 'done' in optuna \S+optuna\.journal "
            r"name 6 MLflow runs that the tracking database \S+ does not have \(lost or "
            r"replaced\?\): restore that store from a backup, or run the study again in a new "
            r"--output-dir\n",
            err,
        ), err
    assert not (tmp_path / "reports").exists()  # no page that says "No finished runs yet"
