"""The embedded stores' accidents: a kill while MLflow creates its tables, a journal torn by a
full disk, a set-up lock held too long, and stores in a read-only folder."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from harness.errors import StoreError
from harness.stores.opening import open_stores
from harness.stores.sqlite import BUILDING, check_tracking_database
from tests.helpers import ROOT, run_cli, write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


# Helpers ------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        raise OSError(done.stderr.strip())


def _umount(folder: Path) -> None:
    for _ in range(20):  # busy for a moment after a child exits
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory) -> None:
    """Skip unless this process may mount (root here; not on every CI)."""
    folder = tmp_path_factory.mktemp("probe")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount")
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder))
    except OSError as err:
        pytest.skip(f"cannot mount here: {err}")
    _umount(folder)


@contextmanager
def tmpfs(folder: Path, size: str):
    """A small file system at `folder` (to fill up)."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        _umount(folder)


@contextmanager
def read_only(folder: Path):
    """`folder` read-only at its own path (a read-only bind mount over itself)."""
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,ro,bind", str(folder))
        yield folder
    finally:
        _umount(folder)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` (hidden ones too): size, mtime and content hash."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def journal_storage(path: Path) -> JournalStorage:
    """Optuna's own journal storage, without the harness's checks."""
    return JournalStorage(JournalFileBackend(str(path)))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# 1. The tracking database is created atomically -----------------------------------------


CREATE = """
import sys
from pathlib import Path
import mlflow.store.tracking.sqlalchemy_store  # imported first: the kill lands in the set-up
from harness.stores.opening import open_stores
stores = open_stores(Path(sys.argv[1]))
print("ready", flush=True)
stores.create_tracking_tables()
print("done", flush=True)
"""


def _open_files() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return names


@pytest.mark.processes
def test_a_kill_while_mlflow_creates_its_tables_leaves_no_broken_database(tmp_path):
    out = tmp_path / "out"
    database = out / "mlflow.db"
    killed_while_building = 0
    for delay in (0.2, 0.5, 0.8, 1.2, 1.6):
        process = subprocess.Popen(
            [sys.executable, "-c", CREATE, str(out)], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "HARNESS_CACHE_DIR": "off"},  # MLflow's migrations, not a copy
        )  # fmt: skip
        assert process.stdout.readline().strip() == "ready"
        time.sleep(delay)
        building = list(out.glob(f".mlflow.db.*{BUILDING}"))
        process.kill()
        process.wait()
        process.stdout.close()
        if database.exists():  # the set-up was done (moved into place) before the kill
            check_tracking_database(database)  # whole: MLflow's tables, its schema revision
            for path in out.glob("mlflow.db*"):
                path.unlink()
            continue
        # the fault was a half-built mlflow.db here ("_alembic_tmp_model_versions already
        # exists", "duplicate column name" on every later run); now there is none at all
        killed_while_building += bool(building)
    assert killed_while_building >= 2  # the kills did land while tables were being created

    stores = open_stores(out)
    stores.create_tracking_tables()  # a normal set-up after the kills
    assert not list(out.glob(f"*{BUILDING}*"))  # the killed processes' leftovers are gone
    assert not [name for name in _open_files() if BUILDING in name]  # no pooled connection
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    assert not [uri for uri in SqlAlchemyStore._engine_map if BUILDING in uri]
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    client = MlflowClient(stores.tracking_uri)
    experiment = client.create_experiment("after-kills")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "x", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
    stores.create_tracking_tables()  # an existing, healthy database is kept as it is
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}


def test_a_full_disk_while_tables_are_created_is_one_line_and_leaves_nothing(tmp_path, can_mount):
    out = tmp_path / "out"
    with tmpfs(out, "256k"):  # MLflow's empty database takes about 1 MB
        stores = open_stores(out)
        with pytest.raises(StoreError) as caught:
            stores.create_tracking_tables()
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"cannot create the tracking database {out / 'mlflow.db'}")
        assert "full" in message
        assert sorted(p.name for p in out.iterdir()) == ["optuna.journal"]


@pytest.fixture(scope="module")
def healthy_database(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("healthy")
    open_stores(out).create_tracking_tables()
    return out / "mlflow.db"


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("CREATE TABLE _alembic_tmp_model_versions (x)", "leftover table _alembic_tmp_model_"),
        ("DROP TABLE model_versions", "tables missing, e.g. model_versions"),
        ("UPDATE alembic_version SET version_num = '0a8213491aaa'", "schema revision 0a8213491aaa"),
    ],
)
def test_a_database_an_older_version_left_half_built_is_named_with_its_remedy(
    tmp_path, healthy_database, damage, fragment
):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(healthy_database, out / "mlflow.db")
    with closing(sqlite3.connect(out / "mlflow.db")) as db:
        db.execute(damage)
        db.commit()
    stores = open_stores(out)
    with pytest.raises(StoreError) as caught:
        with stores.setup_lock():
            stores.create_tracking_tables()
    message = str(caught.value)
    assert "\n" not in message and fragment in message
    assert "half-built by an interrupted first run" in message and "delete it" in message
    with pytest.raises(StoreError):  # a reader is stopped too, before MLflow migrates it
        open_stores(out, read_only=True)


def test_a_damaged_database_that_holds_runs_is_not_called_disposable(tmp_path, healthy_database):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(healthy_database, out / "mlflow.db")
    stores = open_stores(out)
    client = MlflowClient(stores.tracking_uri)
    client.create_run(client.create_experiment("kept"))
    with closing(sqlite3.connect(out / "mlflow.db")) as db:
        db.execute("CREATE TABLE _alembic_tmp_runs (x)")
        db.commit()
    with pytest.raises(StoreError, match=r"holds 1 runs: back it up, then try `mlflow db upg"):
        stores.create_tracking_tables()


# 2. A journal torn by a full disk -----------------------------------------------------------


def _fill(study: optuna.Study) -> None:
    trial = study.ask()
    for index in range(10_000):
        trial.set_user_attr(f"attr{index}", "x" * 9000)  # records larger than a page


@pytest.mark.processes
def test_a_journal_torn_by_a_full_disk_is_cut_back_with_a_copy_kept(tmp_path, can_mount, capsys):
    out = tmp_path / "out"
    journal = out / "optuna.journal"
    with tmpfs(out, "256k"):
        study = optuna.create_study(study_name="full", storage=open_stores(out).storage)
        with pytest.raises(OSError) as caught:
            _fill(study)
        assert caught.value.errno == errno.ENOSPC
        torn = journal.read_bytes()
        assert not torn.endswith(b"\n")  # the fault: the last record is torn
        whole = torn[: torn.rfind(b"\n") + 1]
        kept = optuna.load_study(study_name="full", storage=journal_storage(journal))
        attrs = len(kept.trials[0].user_attrs)  # Optuna skips the torn record when reading

        with pytest.raises(StoreError, match="no copy of it can be kept"):
            open_stores(out)  # the disk is still full: nothing is cut without a copy
        assert journal.read_bytes() == torn and not list(out.glob("optuna.journal.torn-*"))

        _mount("-o", "remount,size=4m", str(out))  # space freed
        # without the repair, the next append joins the torn fragment to its own record,
        # and every later read fails (JSONDecodeError): the fault, on a copy
        bricked = out / "bricked.journal"
        shutil.copyfile(journal, bricked)
        optuna.load_study(study_name="full", storage=journal_storage(bricked)).set_user_attr("a", 1)
        with pytest.raises(ValueError):
            optuna.load_study(study_name="full", storage=journal_storage(bricked)).set_user_attr(
                "b", 2
            )

        capsys.readouterr()
        stores = open_stores(out)
        err = capsys.readouterr().err.strip()
        (backup,) = out.glob("optuna.journal.torn-*")
        assert "\n" not in err and err.startswith(f"repaired optuna journal {journal}")
        assert "cut its torn last record" in err and str(backup) in err
        assert backup.read_bytes() == torn and journal.read_bytes() == whole

        study = optuna.load_study(study_name="full", storage=stores.storage)
        assert len(study.trials[0].user_attrs) == attrs
        study.set_user_attr("after", "repair")
        again = open_stores(out)  # a healthy journal: nothing said, nothing copied
        assert capsys.readouterr().err == ""
        study = optuna.load_study(study_name="full", storage=again.storage)
        assert study.user_attrs == {"after": "repair"}
        assert len(list(out.glob("optuna.journal.torn-*"))) == 1


def _bricked_journal(journal: Path) -> bytes:
    """A journal where an append joined a torn record to its own (what older versions did
    after a full disk), and two more records after it; returns the fragment."""
    study = optuna.create_study(study_name="joined", storage=journal_storage(journal))
    study.set_user_attr("before", 1)
    fragment = b'{"op_code":2,"worker_id":"torn-by-a-full-di'
    with open(journal, "ab") as handle:
        handle.write(fragment)
    study = optuna.load_study(study_name="joined", storage=journal_storage(journal))
    study.set_user_attr("joined", 2)  # written on the fragment's line
    with pytest.raises(ValueError):
        study.set_user_attr("next", 3)  # written, then the read back fails
    with pytest.raises(ValueError):
        optuna.load_study(study_name="joined", storage=journal_storage(journal))
    return fragment


def test_a_journal_where_an_append_joined_a_torn_record_is_mended(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    journal = out / "optuna.journal"
    fragment = _bricked_journal(journal)
    bricked = journal.read_bytes()

    with pytest.raises(StoreError, match=r"line 3 joins a torn record to the next one"):
        open_stores(out, read_only=True)  # a reader says so and changes nothing
    assert journal.read_bytes() == bricked

    capsys.readouterr()
    stores = open_stores(out)
    err = capsys.readouterr().err.strip()
    (backup,) = out.glob("optuna.journal.torn-*")
    assert "\n" not in err and "kept the whole record of line 3" in err and str(backup) in err
    assert backup.read_bytes() == bricked
    assert journal.read_bytes() == bricked.replace(fragment, b"")
    study = optuna.load_study(study_name="joined", storage=stores.storage)
    assert study.user_attrs == {"before": 1, "joined": 2, "next": 3}


def test_a_journal_line_that_cannot_be_mended_stops_the_study_with_its_number(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    journal = out / "optuna.journal"
    optuna.create_study(study_name="bad", storage=journal_storage(journal))
    with open(journal, "ab") as handle:
        handle.write(b"not a record\n")
        handle.write(b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"x":1}}\n')
    damaged = journal.read_bytes()
    for read_only_ in (False, True):
        with pytest.raises(StoreError) as caught:
            open_stores(out, read_only=read_only_)
        message = str(caught.value)
        assert "\n" not in message and f"optuna journal {journal} line 2 is not a valid" in message
        assert "delete that line" in message
    assert journal.read_bytes() == damaged and not list(out.glob("optuna.journal.torn-*"))


def test_a_reader_says_the_last_record_is_torn_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    journal = out / "optuna.journal"
    optuna.create_study(study_name="r", storage=journal_storage(journal)).set_user_attr("a", 1)
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code":2,"wor')
    torn = journal.read_bytes()
    capsys.readouterr()
    stores = open_stores(out, read_only=True)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"optuna journal {journal}: its last record is torn" in err
    assert "ignored" in err
    assert optuna.load_study(study_name="r", storage=stores.storage).user_attrs == {"a": 1}
    assert journal.read_bytes() == torn and sorted(p.name for p in out.iterdir()) == [
        "optuna.journal"
    ]
    with pytest.raises(StoreError, match="opened for reading"):
        with stores.setup_lock():
            pass


def test_a_live_writers_half_written_record_is_not_taken_for_a_torn_one(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    journal = out / "optuna.journal"
    optuna.create_study(study_name="live", storage=journal_storage(journal))
    lock = JournalFileSymlinkLock(str(journal))  # a writer in the middle of its append
    lock.acquire()
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code":2,"worker_id":"live","study_id":0,')
    opened = []
    opener = threading.Thread(target=lambda: opened.append(open_stores(out)))
    opener.start()
    time.sleep(0.5)
    assert not opened  # waiting for the writer's lock
    with open(journal, "ab") as handle:
        handle.write(b'"user_attr":{"live":1}}\n')
    lock.release()
    opener.join(timeout=30)
    assert opened and not list(out.glob("optuna.journal.torn-*"))
    assert "repaired" not in capsys.readouterr().err
    study = optuna.load_study(study_name="live", storage=opened[0].storage)
    assert study.user_attrs == {"live": 1}


# 3. The set-up lock -------------------------------------------------------------------------


@pytest.mark.mnist
@pytest.mark.processes
def test_a_worker_waits_for_a_held_set_up_lock_says_for_whom_and_gives_up(tmp_path, mnist_dir):
    path = write_study(tmp_path, "locked", space={"beta": [0.9]})
    out = tmp_path / "out"
    stores = open_stores(out)
    with stores.setup_lock():  # a stopped or slow worker holds it
        assert (out / ".setup.lock").read_text().split()[0] == str(os.getpid())
        start = time.monotonic()
        done = run_cli(
            "study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir),
            timeout=120, env={"HARNESS_LOCK_TIMEOUT": "2"},
        )  # fmt: skip
        seconds = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    waiting = [line for line in done.stderr.splitlines() if line.startswith("waiting for")]
    assert waiting == [
        f"waiting for the set-up lock {out / '.setup.lock'}, held by pid {os.getpid()} (up to 2 s)"
    ]
    (error,) = error_lines(done.stderr)
    assert f"held by pid {os.getpid()} after 2 s" in error and "HARNESS_LOCK_TIMEOUT" in error
    assert "Traceback" not in done.stderr
    assert seconds < 60  # the data load and imports, then 2 s of waiting
    assert (out / ".setup.lock").read_text() == ""  # released: no holder named any more


def test_the_lock_timeout_must_be_a_number(tmp_path, monkeypatch):
    stores = open_stores(tmp_path / "out")
    monkeypatch.setenv("HARNESS_LOCK_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="HARNESS_LOCK_TIMEOUT must be a number"):
        with stores.setup_lock():
            pass


# 4. Read-only stores ------------------------------------------------------------------------


@pytest.mark.mnist
@pytest.mark.processes
def test_finished_stores_in_a_read_only_folder_are_read_and_not_written(
    tmp_path, mnist_dir, can_mount
):
    path = write_study(tmp_path, "frozen", space={"beta": [0.9]}, seeds=1)
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    before = snapshot(out)
    reports = tmp_path / "reports"
    with read_only(out):
        report = run_cli(
            "report", str(path), "--output-dir", str(out), "--reports-dir", str(reports)
        )
        study = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
        inside = run_cli(
            "study", str(path), "--output-dir", str(out / "new"), "--data-dir", str(mnist_dir)
        )
        with pytest.raises(StoreError, match="is read-only"):
            open_stores(out)
    assert snapshot(out) == before  # nothing in the read-only folder changed

    assert report.returncode == 0, report.stderr
    assert (reports / "frozen" / "index.html").exists()
    assert (reports / "frozen" / "report.pdf").exists()
    copies = [line for line in report.stderr.splitlines() if "reading a private copy" in line]
    assert len(copies) == 1 and "is read-only" in copies[0]

    assert study.returncode == 1
    (error,) = error_lines(study.stderr)
    assert error.startswith(f"error: output folder {out} is read-only")
    assert "Traceback" not in study.stderr
    assert inside.returncode == 1
    (error,) = error_lines(inside.stderr)
    assert error == f"error: cannot create output folder {out / 'new'}: {out} is read-only"

    # writable again: a reader reads in place, says nothing, and may not write
    stores = open_stores(out, read_only=True)
    assert stores.tracking_uri == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    finished = optuna.load_study(study_name="frozen", storage=stores.storage)
    run_ids = finished.trials[0].user_attrs["mlflow_run_ids"]
    assert MlflowClient(stores.tracking_uri).get_run(run_ids[0]).info.status == "FINISHED"
    with pytest.raises(StoreError, match="opened for reading"):
        stores.create_tracking_tables()


def test_reading_stores_that_are_not_there_creates_nothing(tmp_path):
    out = tmp_path / "nothing"
    stores = open_stores(out, read_only=True)
    with pytest.raises(KeyError):
        optuna.load_study(study_name="absent", storage=stores.storage)
    assert not out.exists()


def test_a_new_tracking_database_is_a_copy_of_the_cached_empty_one(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    databases = []
    for name in ("first", "second"):
        stores = open_stores(tmp_path / name)
        with stores.setup_lock():
            stores.create_tracking_tables()
        databases.append(tmp_path / name / "mlflow.db")
        check_tracking_database(databases[-1])
    (template,) = cache.glob("mlflow-*.db")  # built by the first, copied by the second
    for database in databases:
        with closing(sqlite3.connect(database)) as db:
            (location,) = db.execute(
                "SELECT artifact_location FROM experiments WHERE experiment_id = 0"
            ).fetchone()
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert location == (database.parent / "mlartifacts").resolve().as_uri() + "/0"
    client = MlflowClient(open_stores(tmp_path / "second").tracking_uri)
    experiment = client.create_experiment("works")
    client.create_run(experiment)  # MLflow uses the copy as its own
    template.write_bytes(b"not a database")  # a damaged cache: built afresh instead
    stores = open_stores(tmp_path / "third")
    with stores.setup_lock():
        stores.create_tracking_tables()
    check_tracking_database(tmp_path / "third" / "mlflow.db")
    monkeypatch.setenv("HARNESS_CACHE_DIR", "off")
    for path in cache.glob("*"):
        path.unlink()
    stores = open_stores(tmp_path / "fourth")
    with stores.setup_lock():
        stores.create_tracking_tables()
    assert not list(cache.glob("*"))  # off: nothing cached


def test_a_lost_databases_log_is_not_replayed_into_a_new_one(tmp_path, capsys):
    """mlflow.db deleted while its -wal stays (a process still had it open, or a copy took the
    log without the database): the new database must not take the lost one's pages."""
    first, second = tmp_path / "first", tmp_path / "second"
    stores = open_stores(first)
    stores.create_tracking_tables()
    with closing(sqlite3.connect(first / "mlflow.db")) as holder:
        holder.execute("SELECT count(*) FROM experiments").fetchall()  # no checkpoint at close
        MlflowClient(stores.tracking_uri).create_experiment("lost")
        second.mkdir()
        for suffix in ("-wal", "-shm"):
            shutil.copyfile(first / f"mlflow.db{suffix}", second / f"mlflow.db{suffix}")
    assert (second / "mlflow.db-wal").stat().st_size > 0
    fresh = open_stores(second)
    fresh.create_tracking_tables()
    assert MlflowClient(fresh.tracking_uri).get_experiment_by_name("lost") is None
    kept = sorted(p.name.split(".orphaned-")[0] for p in second.glob("mlflow.db-*.orphaned-*"))
    assert kept == ["mlflow.db-shm", "mlflow.db-wal"]
    notes = [n for n in capsys.readouterr().err.splitlines() if n.startswith("note:")]
    assert len(notes) == 2 and all("belonged to a database that is gone" in n for n in notes)
