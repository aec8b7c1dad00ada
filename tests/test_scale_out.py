"""Scale-out under faults, with real processes: workers started together on fresh PostgreSQL
databases, a database stopped and started mid-study, an MLflow tracking server killed
mid-study, a worker that ends while another still runs. After each: one-line messages, the
exit codes, and stores a rerun finds consistent (nothing RUNNING, every seed once)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.stores.lock import advisory_lock
from harness.stores.opening import open_stores
from harness.study.settled import settled_trials
from harness.study.tags import FAILED_TAG
from harness.ui.servers import stop_process_group
from tests.helpers import (
    ROOT,
    free_port,
    pause_between_writes,
    wait_for_running_run,
    write_study,
)
from tests.launcher import CliProcess
from tests.postgres import Server


class Worker:
    """A `harness` process (see tests/launcher.py) whose stdout and stderr lines are read as
    they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None):
        self.process = CliProcess(args, cwd, env={"PYTHONPATH": str(ROOT), **(env or {})})

    @property
    def stdout(self) -> str:
        return self.process.stdout

    @property
    def stderr(self) -> str:
        return self.process.stderr

    @property
    def lines(self) -> dict[str, list[str]]:
        return {"out": self.stdout.splitlines(True), "err": self.stderr.splitlines(True)}

    def wait_for(self, pattern: str, stream: str = "out", timeout: float = 180) -> str:
        """The first line of `stream` that matches `pattern`, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.process.poll() is not None
            for line in self.lines[stream]:
                if re.search(pattern, line):
                    return line
            assert not ended and time.monotonic() < deadline, (
                f"no line {pattern!r}: {self.stdout}\n{self.stderr}"
            )
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)


def study_args(path: Path, data_dir: Path, *flags: str) -> list[str]:
    return ["study", str(path), "--data-dir", str(data_dir), *flags]


def assert_every_seed_once(storage, tracking_uri: str, name: str, points: int, seeds: int):
    """Nothing RUNNING; each configuration settled once with all its seeds, each seed's run
    FINISHED and counted once; every run not counted is tagged as a failed trial's."""
    study = optuna.load_study(study_name=name, storage=storage)
    assert TrialState.RUNNING not in {t.state for t in study.trials}, [
        (t.number, t.state, t.user_attrs) for t in study.trials
    ]
    settled = settled_trials(study)
    assert len({repr(sorted(t.params.items())) for t in settled}) == len(settled) == points
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in {r.info.status for r in runs.values()}
    counted = [i for t in settled for i in t.user_attrs["mlflow_run_ids"]]
    assert len(counted) == len(set(counted)) == points * seeds
    for trial in settled:
        seeded = [runs[i].data.tags["harness.seed"] for i in trial.user_attrs["mlflow_run_ids"]]
        assert sorted(seeded) == [str(s) for s in range(seeds)]
    kept = set(counted) | {t.user_attrs["mlflow_parent_run_id"] for t in settled}
    for run_id, run in runs.items():
        assert (run_id in kept) != (FAILED_TAG in run.data.tags), run.info
        if run_id in kept:
            assert run.info.status == "FINISHED"


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL server of this module's own (the tests stop and start it)."""
    server = Server()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.mnist
@pytest.mark.postgres
@pytest.mark.processes
def test_workers_started_together_on_fresh_databases_all_run(tmp_path, mnist_dir, server):
    storage = server.createdb("together_optuna")
    tracking = server.createdb("together_mlflow")
    # empty databases (every worker finds no tables), then the tables there (every worker
    # finds no experiment of the second study)
    for name in ("fresh", "second"):
        path = write_study(tmp_path, name, space={"beta": [0.7, 0.8, 0.9]}, seeds=2)
        args = study_args(path, mnist_dir, "--storage", storage, "--tracking-uri", tracking)
        workers = [Worker(args, tmp_path) for _ in range(3)]
        codes = [worker.finish() for worker in workers]
        assert codes == [0, 0, 0], "\n".join(w.stderr for w in workers)
        assert_every_seed_once(storage, tracking, name, points=3, seeds=2)


@pytest.mark.mnist
@pytest.mark.postgres
@pytest.mark.processes
def test_a_worker_waits_for_the_postgresql_set_up_lock_and_says_for_whom(
    tmp_path, mnist_dir, server
):
    storage = server.createdb("lock_optuna")
    tracking = server.createdb("lock_mlflow")
    path = write_study(tmp_path, "locked", space={"beta": [0.9]})
    args = study_args(path, mnist_dir, "--storage", storage, "--tracking-uri", tracking)
    with advisory_lock(tracking, timeout=10):  # as another worker setting up would
        worker = Worker(args, tmp_path)
        line = worker.wait_for(r"waiting for the set-up lock", stream="err")
        assert f"held by pid {os.getpid()} (up to 120 s)" in line
        assert "together_optuna" not in line and "lock_mlflow" in line
        time.sleep(1)
        assert worker.process.poll() is None  # it waits
    assert worker.finish() == 0, worker.stderr
    assert_every_seed_once(storage, tracking, "locked", points=1, seeds=1)


@pytest.mark.mnist
@pytest.mark.postgres
@pytest.mark.processes
def test_a_database_restart_mid_study_is_waited_for(tmp_path, mnist_dir, server):
    storage = server.createdb("restart_optuna")
    tracking = server.createdb("restart_mlflow")
    path = write_study(tmp_path, "restart", space={"beta": [0.7, 0.8, 0.9]}, seeds=2)
    args = study_args(path, mnist_dir, "--storage", storage, "--tracking-uri", tracking)
    worker = Worker(args, tmp_path)
    worker.wait_for(r"^trial +0 ")
    server.stop()  # pg_ctl stop -m fast: connections end, new ones are refused
    line = worker.wait_for(r"^waiting for ", stream="err")
    assert re.match(r"waiting for (optuna storage|the tracking database) postgresql://", line)
    assert re.search(r"\((connection refused|server closed the connection unexpectedly|"
                     r"the database system is shutting down|.*)\): retry 1 in 0\.5 s, giving up "
                     r"in 1[12]\d s$", line.rstrip())  # fmt: skip
    time.sleep(2)
    server.start()
    assert worker.finish() == 0, worker.stderr
    retries = [x for x in worker.lines["err"] if x.startswith("waiting for ")]
    assert 1 <= len(retries) == len(worker.lines["err"])  # nothing else on stderr
    assert_every_seed_once(storage, tracking, "restart", points=3, seeds=2)


@pytest.mark.mnist
@pytest.mark.postgres
@pytest.mark.processes
def test_a_database_down_for_longer_than_the_bound_fails_the_trial_in_one_line(
    tmp_path, mnist_dir, server
):
    storage = server.createdb("down_optuna")
    tracking = server.createdb("down_mlflow")
    path = write_study(tmp_path, "down", space={"beta": [0.7, 0.8, 0.9]}, seeds=2)
    args = study_args(path, mnist_dir, "--storage", storage, "--tracking-uri", tracking)
    worker = Worker(args, tmp_path, env={"HARNESS_STORE_RETRY_SECONDS": "3"})
    worker.wait_for(r"^trial +0 ")
    server.stop()
    try:
        started = time.monotonic()
        assert worker.finish(timeout=60) == 1
        assert time.monotonic() - started < 20
    finally:
        server.start()
    errors = [x for x in worker.lines["err"] if not x.startswith("waiting for ")]
    assert len(errors) == 1, worker.stderr
    # in a trial (which fails), or between two (stopped before the next one)
    assert re.match(r"error: (trial \d failed, the next worker reruns it: )?(optuna storage|the "
                    r"tracking database) postgresql://\S+ unreachable for 3 s \(.*\); "
                    r"HARNESS_STORE_RETRY_SECONDS sets how long to wait$",
                    errors[0].rstrip())  # fmt: skip
    # The database may have gone down between a trial's creation and its worker recording its
    # pid; such a trial counts as alive until HARNESS_STALE_SECONDS pass, so shorten them.
    again = Worker(args, tmp_path, env={"HARNESS_STALE_SECONDS": "1"})
    assert again.finish() == 0, again.stderr
    assert_every_seed_once(storage, tracking, "down", points=3, seeds=2)


def start_tracking_server(folder: Path, port: int) -> subprocess.Popen:
    """`harness ui` on an SQLite database in `folder`, waited for until it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--tracking-uri",
         f"sqlite:///{folder / 'mlflow.db'}", "--port", str(port)],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)


def kill_server(server: subprocess.Popen) -> None:
    """The whole server dies at once, as a crash would do: `harness ui`, and the process group
    of the MLflow server it started (uvicorn's processes too)."""
    children = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if _parent(stat) == server.pid
    ]
    for child in children:
        os.killpg(child, signal.SIGKILL)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def _parent(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.mnist
@pytest.mark.processes
def test_a_tracking_server_killed_mid_study(tmp_path, mnist_dir):
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    path = write_study(tmp_path, "remote", space={"beta": [0.6, 0.7, 0.8, 0.9]}, seeds=2)
    out = tmp_path / "out"
    args = study_args(path, mnist_dir, "--output-dir", str(out))
    env = {"MLFLOW_TRACKING_URI": uri}
    server = start_tracking_server(folder, port)
    try:
        # a stop signal while the worker waits for the server: honoured within seconds
        worker = Worker(args, tmp_path, env)
        worker.wait_for(r"^trial +0 ")
        kill_server(server)
        line = worker.wait_for(r"^waiting for ", stream="err")
        assert line.startswith(f"waiting for the MLflow tracking server {uri} (")
        worker.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert worker.finish(timeout=60) == 143
        assert time.monotonic() - started < 5
        assert worker.lines["err"][-1] == "interrupted: stopped by SIGTERM\n", worker.stderr

        # the server down for longer than the bound: the trial fails in one line
        server = start_tracking_server(folder, port)
        worker = Worker(args, tmp_path, {**env, "HARNESS_STORE_RETRY_SECONDS": "2"})
        worker.wait_for(r"^trial +\d ")
        kill_server(server)
        assert worker.finish(timeout=60) == 1
        errors = [x for x in worker.lines["err"] if not x.startswith("waiting for ")]
        assert len(errors) == 1, worker.stderr
        assert re.match(rf"error: trial \d failed, the next worker reruns it: the MLflow tracking "
                        rf"server {uri} unreachable for 2 s \(.*\); HARNESS_STORE_RETRY_SECONDS",
                        errors[0])  # fmt: skip

        # back again: a rerun finishes the study; nothing RUNNING, every seed once
        server = start_tracking_server(folder, port)
        again = Worker(args, tmp_path, env)
        assert again.finish() == 0, again.stderr
        storage = open_stores(out).storage
        assert_every_seed_once(storage, uri, "remote", points=4, seeds=2)
    finally:
        stop_process_group(server)


@pytest.mark.mnist
@pytest.mark.processes
def test_a_worker_that_ends_while_another_runs_says_its_table_is_partial(tmp_path, mnist_dir):
    # runs of seconds, so that the pause lands in training
    path = write_study(tmp_path, "share", space={"beta": [0.7, 0.8]},
                       base={"train_subset": 19200, "hidden": 300, "num_steps": 25})  # fmt: skip
    out = tmp_path / "out"
    args = study_args(path, mnist_dir, "--output-dir", str(out))
    first = Worker(args, tmp_path)
    wait_for_running_run(out, "share")
    time.sleep(0.5)
    pause_between_writes(first.process, out)
    try:
        second = Worker(args, tmp_path)
        assert second.finish() == 0, second.stderr
    finally:
        first.process.send_signal(signal.SIGCONT)
    lines = second.stdout.splitlines()
    notice = next(i for i, x in enumerate(lines) if "still running elsewhere" in x)
    assert re.fullmatch(r"1 configuration still running elsewhere \(trial \d\): the table below "
                        r"is partial; the last worker to finish prints the final one",
                        lines[notice])  # fmt: skip
    assert any(x.startswith("best so far: trial ") for x in lines[notice:])
    assert not any(x.startswith("best: ") for x in lines)
    assert first.finish() == 0, first.stderr
    assert "still running elsewhere" not in first.stdout
    assert any(x.startswith("best: trial ") for x in first.stdout.splitlines())
