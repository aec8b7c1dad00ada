"""Faults at exact moments (a kill -9, a signal, a paused worker, an edited study file), then a
rerun: every configuration counted exactly once, reports equal to the study's table, nothing
left RUNNING. Faults are injected by running the CLI in a child process with one library call
patched to kill the process (os._exit) at the moment named."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.config import load_study
from harness.report import aggregate, build_report
from harness.stores.opening import open_stores
from harness.study import scheduling, tracking
from harness.study.runner import run_study
from harness.study.scheduling import next_trial, suggest
from harness.study.settled import settled_trials
from harness.study.table import summary_rows
from harness.study.tags import FAILED_TAG
from tests.helpers import (
    ROOT,
    SLOW,
    pause_between_writes,
    run_cli,
    seed_runs,
    start_study,
    wait_for_running_run,
    write_study,
)

# Each patch runs in the CLI's process before `main` (see tests/launcher.py).
KILL_POINTS = {
    # a run exists in MLflow, its trial does not know it yet
    "run_not_linked": """
import os, optuna
_set = optuna.trial.Trial.set_user_attr
def set_user_attr(self, key, value):
    if key == "mlflow_run_ids":
        os._exit(9)
    _set(self, key, value)
optuna.trial.Trial.set_user_attr = set_user_attr
""",
    # the first seed's run is FINISHED in MLflow, its trial has not recorded it
    "seed_finished_unrecorded": """
import os, harness.study.tracking
_finish = harness.study.tracking.RunLogger.finish
def finish(self, result):
    _finish(self, result)
    os._exit(9)
harness.study.tracking.RunLogger.finish = finish
""",
    # between seeds: the first seed finished and recorded
    "between_seeds": """
import os, optuna
_set = optuna.trial.Trial.set_user_attr
def set_user_attr(self, key, value):
    _set(self, key, value)
    if key == "runs":
        os._exit(9)
optuna.trial.Trial.set_user_attr = set_user_attr
""",
    # every seed finished, the trial not told
    "before_tell": """
import os, optuna
_tell = optuna.Study.tell
def tell(self, trial, values=None, state=None, **kwargs):
    if values is not None:
        os._exit(9)
    return _tell(self, trial, values, state, **kwargs)
optuna.Study.tell = tell
""",
}


def study_args(path: Path, out: Path, mnist_dir: Path) -> list[str]:
    return ["study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir)]


def all_runs(client: MlflowClient, name: str):
    """Every run of the study's experiment: configurations' parent runs and seeds' runs."""
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id])


def assert_consistent(out: Path, path: Path, seeds: int) -> None:
    """No trial or run RUNNING; each configuration settled once with `seeds` finished runs,
    whose numbers the report and the study's table agree on; every other run is tagged."""
    stores = open_stores(out)
    config = load_study(str(path))
    client = MlflowClient(stores.tracking_uri)
    study = optuna.load_study(study_name=config.name, storage=stores.storage)
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    runs = all_runs(client, config.name)
    assert "RUNNING" not in {r.info.status for r in runs}
    settled = settled_trials(study)
    assert len({json.dumps(t.params, sort_keys=True) for t in settled}) == len(settled)
    counted = {i for t in settled for i in t.user_attrs["mlflow_run_ids"]}
    parents = {t.user_attrs["mlflow_parent_run_id"] for t in settled}
    for run in runs:
        kept = run.info.run_id in counted | parents
        assert (FAILED_TAG in run.data.tags) != kept, run.info
    data = aggregate.load(config, study, client)
    table = aggregate.configurations(data)
    assert len(data.runs) == len(counted) == seeds * len(settled)
    assert list(table["seeds"]) == [seeds] * len(settled)
    values = {t.number: t.value for t in settled}
    for row in summary_rows(study, config):
        assert row["seeds"] == seeds
        match = table[table["config"] == aggregate._label(row["params"], list(config.space))]
        mean = float(match["test_accuracy_mean"].iloc[0])
        assert mean == pytest.approx(row["test_accuracy"][0], abs=1e-12)
        assert mean == pytest.approx(values[row["trial"]], abs=1e-12)


@pytest.mark.mnist
@pytest.mark.processes
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_any_point_then_a_rerun_counts_each_seed_once(tmp_path, mnist_dir, point):
    path = write_study(tmp_path, "k", space={"beta": [0.9]}, seeds=[0, 1])
    out = tmp_path / "out"
    killed = run_cli(*study_args(path, out, mnist_dir), patch=KILL_POINTS[point])
    assert killed.returncode == 9, killed.stderr
    resumed = run_cli(*study_args(path, out, mnist_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert_consistent(out, path, seeds=2)
    stores = open_stores(out)
    runs = seed_runs(MlflowClient(stores.tracking_uri), "k")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    # a seed recorded as finished is reused by the rerun, not trained again
    reused = point in ("between_seeds", "before_tell")
    assert len(finished) == (2 if reused else 3 if point == "seed_finished_unrecorded" else 2)
    if point == "run_not_linked":
        assert "1 MLflow run(s) had lost their worker: ended" in resumed.stdout
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]


@pytest.mark.mnist
@pytest.mark.processes
def test_a_changed_study_file_is_refused_and_the_stored_one_kept(tmp_path, mnist_dir, capsys):
    from harness.cli import main

    path = write_study(tmp_path, "edit", space={"beta": [0.9]}, description="first")
    out = tmp_path / "out"
    assert run_cli(*study_args(path, out, mnist_dir)).returncode == 0
    stores = open_stores(out)
    before = optuna.load_study(study_name="edit", storage=stores.storage).user_attrs["config"]
    write_study(tmp_path, "edit", space={"beta": [0.9]}, base={"lr": 1e-3}, seeds=[0, 1])
    assert main(study_args(path, out, mnist_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "base.lr unset -> 0.001" in err and "seeds 1 -> [0, 1]" in err
    study = optuna.load_study(study_name="edit", storage=stores.storage)
    assert study.user_attrs["config"] == before and len(study.trials) == 1
    # the description and n_trials may change: the study then just runs on
    write_study(tmp_path, "edit", space={"beta": [0.9]}, description="second")
    assert main(study_args(path, out, mnist_dir)) == 0
    study = optuna.load_study(study_name="edit", storage=stores.storage)
    assert study.user_attrs["description"] == "second" and len(study.trials) == 1


SEARCH = {"beta": {"low": 0.5, "high": 0.99}, "decoding": {"choices": ["rate", "latency"]}}


@pytest.mark.mnist
@pytest.mark.processes
def test_resumed_search_processes_draw_new_configurations(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "s", space=SEARCH, sampler="random", sampler_seed=0, n_trials=3,
        base={"train_subset": 320, "hidden": 50},
    )  # fmt: skip
    out = tmp_path / "out"
    for _ in range(3):  # three processes, one trial each, all from sampler_seed 0
        done = run_cli(*study_args(path, out, mnist_dir), "--max-trials", "1")
        assert done.returncode == 0, done.stderr
    assert run_cli(*study_args(path, out, mnist_dir)).returncode == 0  # n_trials reached
    study = optuna.load_study(study_name="s", storage=open_stores(out).storage)
    params = [json.dumps(t.params, sort_keys=True) for t in settled_trials(study)]
    assert len(params) == 3 and len(set(params)) == 3
    # reproducible: the same study from scratch draws the same three configurations
    again = tmp_path / "again"
    assert run_cli(*study_args(path, again, mnist_dir)).returncode == 0
    study2 = optuna.load_study(study_name="s", storage=open_stores(again).storage)
    assert [json.dumps(t.params, sort_keys=True) for t in settled_trials(study2)] == params


def test_a_search_worker_waits_for_a_lower_trial_to_suggest_before_keeping_its_draw(tmp_path):
    """Another worker has just taken trial 0 and not yet suggested its params (it will, the
    same point: the space has one); this worker's draw must not pass as new meanwhile."""
    path = write_study(tmp_path, "one", space={"beta": [0.9]}, sampler="random", n_trials=2)
    config = load_study(str(path))
    study = optuna.create_study(study_name="one", direction="maximize")
    taken = study.ask()
    threading.Timer(0.3, lambda: suggest(taken, config)).start()
    assert next_trial(study, config) is None  # its one point is trial 0's
    assert taken.params == {"beta": 0.9}
    skipped = [t for t in study.trials if t.number > 0]
    assert skipped and {t.user_attrs["message"] for t in skipped} == {
        "a configuration already tried"
    }


def test_a_search_worker_does_not_wait_for_a_trial_whose_worker_died_before_suggesting(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(scheduling, "SUGGEST_WAIT", 0.5)
    path = write_study(tmp_path, "one", space={"beta": [0.9]}, sampler="random", n_trials=2)
    config = load_study(str(path))
    study = optuna.create_study(study_name="one", direction="maximize")
    study.ask()  # taken, and its worker gone before it suggested
    time.sleep(0.6)
    start = time.monotonic()
    trial = next_trial(study, config)
    assert trial is not None and trial.params == {"beta": 0.9}
    assert time.monotonic() - start < 0.4


@pytest.mark.mnist
@pytest.mark.processes
def test_two_workers_run_exactly_n_trials_of_a_search(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "w", space=SEARCH, sampler="tpe", sampler_seed=0, n_trials=5,
        base={"train_subset": 320, "hidden": 50},
    )  # fmt: skip
    out = tmp_path / "out"
    done = run_cli(*study_args(path, out, mnist_dir), "--workers", "2")
    assert done.returncode == 0, done.stderr
    stores = open_stores(out)
    study = optuna.load_study(study_name="w", storage=stores.storage)
    settled = settled_trials(study)
    assert len(settled) == 5
    assert len({json.dumps(t.params, sort_keys=True) for t in settled}) == 5
    runs = seed_runs(MlflowClient(stores.tracking_uri), "w")
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.mnist
@pytest.mark.processes
@pytest.mark.parametrize(("how", "code"), [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_signal_during_training_ends_run_and_trial_and_exits_with_its_code(
    tmp_path, mnist_dir, how, code
):
    path = write_study(tmp_path, "sig", base=SLOW, space={"beta": [0.8]})
    out = tmp_path / "out"
    process = start_study(path, out, mnist_dir)
    run_id = wait_for_running_run(out, "sig")
    time.sleep(1.0)  # well inside training
    sent = time.monotonic()
    process.send_signal(getattr(signal, how))
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert time.monotonic() - sent < 10
    assert "Traceback" not in err and "Exception ignored" not in err
    stores = open_stores(out)
    assert MlflowClient(stores.tracking_uri).get_run(run_id).info.status == "KILLED"
    study = optuna.load_study(study_name="sig", storage=stores.storage)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["outcome"] == "interrupted"
    assert run_cli(*study_args(path, out, mnist_dir)).returncode == 0
    assert_consistent(out, path, seeds=1)


@pytest.mark.mnist
@pytest.mark.processes
@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0])
def test_a_signal_at_any_moment_of_start_up_is_honoured(tmp_path, mnist_dir, delay):
    path = write_study(tmp_path, "early", space={"beta": [0.9]})
    out = tmp_path / "out"
    process = subprocess.Popen(  # a fresh interpreter: the signal may land in its imports
        [sys.executable, "-m", "harness", *study_args(path, out, mnist_dir)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    # before the handler is installed (imports) the default action ends it: -15, nothing written
    assert process.returncode in (143, -signal.SIGTERM), err
    assert "Traceback" not in err
    if out.exists() and (out / "optuna.journal").exists():
        assert run_cli(*study_args(path, out, mnist_dir)).returncode == 0
        assert_consistent(out, path, seeds=1)


@pytest.mark.mnist
@pytest.mark.processes
def test_a_paused_worker_whose_trial_was_taken_stops_it_cleanly_and_goes_on(tmp_path, mnist_dir):
    path = write_study(tmp_path, "pause", base=SLOW, space={"beta": [0.8]})
    out = tmp_path / "out"
    fast = {"HARNESS_STALE_SECONDS": "3", "HARNESS_HEARTBEAT_SECONDS": "0.5"}
    first = start_study(path, out, mnist_dir, env={**fast, "HARNESS_WORKER_HOST": "laptop"})
    paused_run = wait_for_running_run(out, "pause")
    pause_between_writes(first, out)
    try:
        time.sleep(5)  # longer than the stale limit: the other host takes it for dead
        second = run_cli(
            *study_args(path, out, mnist_dir), env={**fast, "HARNESS_WORKER_HOST": "server"}
        )
        assert second.returncode == 0, second.stderr
        assert "had lost their worker" in second.stdout
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "another worker took it over" in stdout and "Traceback" not in stderr
    stores = open_stores(out)
    assert MlflowClient(stores.tracking_uri).get_run(paused_run).info.status == "KILLED"
    assert_consistent(out, path, seeds=1)


@pytest.mark.mnist
@pytest.mark.processes
def test_a_paused_worker_on_this_host_is_not_declared_dead(tmp_path, mnist_dir):
    path = write_study(tmp_path, "nap", base=SLOW, space={"beta": [0.8, 0.9]})
    out = tmp_path / "out"
    fast = {"HARNESS_STALE_SECONDS": "2", "HARNESS_HEARTBEAT_SECONDS": "0.5"}
    first = start_study(path, out, mnist_dir, env=fast)
    wait_for_running_run(out, "nap")
    pause_between_writes(first, out)
    try:
        time.sleep(3)
        second = run_cli(
            *study_args(path, out, mnist_dir), "--max-trials", "1", "--no-summary", env=fast
        )
        assert second.returncode == 0, second.stderr
        assert "lost their worker" not in second.stdout
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert_consistent(out, path, seeds=1)


@pytest.mark.mnist
def test_reports_page_through_all_runs(tmp_path, mnist_dir, monkeypatch):
    path = write_study(tmp_path, "many", space={"beta": [0.7, 0.8, 0.9]}, seeds=[0, 1])
    config = load_study(str(path))
    stores = open_stores(tmp_path / "out")
    study = run_study(config, stores, mnist_dir, progress=False)
    monkeypatch.setattr(tracking, "SEARCH_PAGE", 4)  # 6 seeds' and 3 parent runs: 3 pages
    calls = []
    search = MlflowClient.search_runs
    monkeypatch.setattr(
        MlflowClient, "search_runs", lambda self, *a, **k: calls.append(k) or search(self, *a, **k)
    )
    data = aggregate.load(config, study, MlflowClient(stores.tracking_uri))
    assert len(data.runs) == 6 and len(calls) == 3 and calls[2]["page_token"]
    assert list(aggregate.configurations(data)["seeds"]) == [2, 2, 2]


@pytest.mark.mnist
def test_a_report_killed_while_writing_keeps_the_previous_one(tmp_path, mnist_dir):
    path = write_study(tmp_path, "rep", space={"beta": [0.9]})
    config = load_study(str(path))
    stores = open_stores(tmp_path / "out")
    run_study(config, stores, mnist_dir, progress=False)
    reports = tmp_path / "reports"
    page = build_report(config, stores, reports / "rep")
    before = page.read_text()
    patch = """
import os, harness.report.render
def _pdf(*args, **kwargs):
    os._exit(9)
harness.report.render._pdf = _pdf
"""
    killed = run_cli(
        "report", str(path), "--output-dir", str(tmp_path / "out"), "--reports-dir",
        str(reports), patch=patch,
    )  # fmt: skip
    assert killed.returncode == 9, killed.stderr
    assert page.read_text() == before and (page.parent / "report.pdf").stat().st_size > 0


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB file system of its own (tmpfs), to fill up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.mnist
@pytest.mark.processes
def test_a_full_disk_during_training_is_one_line_and_fails_run_and_trial(
    tmp_path, mnist_dir, small_disk
):
    path = write_study(tmp_path, "full", base=SLOW, space={"beta": [0.8]})
    out = small_disk / "out"
    process = start_study(path, out, mnist_dir)
    run_id = wait_for_running_run(out, "full")
    filler = small_disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk is full" in errors[0], err
    assert "Traceback" not in err
    filler.unlink()
    assert run_cli(*study_args(path, out, mnist_dir)).returncode == 0
    stores = open_stores(out)
    assert MlflowClient(stores.tracking_uri).get_run(run_id).info.status == "FAILED"
    study = optuna.load_study(study_name="full", storage=stores.storage)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["outcome"] == "error"
    assert_consistent(out, path, seeds=1)
