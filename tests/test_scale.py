"""Reliability and scale-out: parallel workers, PostgreSQL + an MLflow server, divergence."""

import os
import re
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.config import make_run_config
from harness.network.model import load_weights
from harness.stores.opening import open_stores
from harness.ui.servers import stop_process_group
from tests.helpers import free_port, run_cli, seed_runs, write_study
from tests.postgres import Server

GRID = {"beta": [0.7, 0.8, 0.9], "decoding": ["rate", "latency"]}


def assert_grid_covered_once(study: optuna.Study, client: MlflowClient, seeds: int) -> None:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    points = sorted((t.params["beta"], t.params["decoding"]) for t in complete)
    assert points == sorted((b, d) for b in GRID["beta"] for d in GRID["decoding"])
    assert all(t.user_attrs.get("outcome") == "skipped" for t in study.trials if t not in complete)
    runs = seed_runs(client, study.study_name)
    assert len(runs) == len(points) * seeds  # nothing trained twice, nothing lost
    assert {r.info.status for r in runs} == {"FINISHED"}
    names = sorted(r.info.run_name for r in runs)
    assert len(set(names)) == len(names)
    linked = sorted(i for t in complete for i in t.user_attrs["mlflow_run_ids"])
    assert linked == sorted(r.info.run_id for r in runs)


@pytest.mark.mnist
@pytest.mark.processes
def test_two_workers_cover_a_grid_once_on_the_embedded_stores(tmp_path, mnist_dir):
    path = write_study(tmp_path, "pair", space=GRID, seeds=2)
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--workers", "2", "--output-dir", str(out),
                   "--data-dir", str(mnist_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 workers trained 12 runs" in done.stdout
    stores = open_stores(out)
    study = optuna.load_study(study_name="pair", storage=stores.storage)
    assert_grid_covered_once(study, MlflowClient(stores.tracking_uri), seeds=2)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 with databases optuna and mlflow."""
    server = Server()
    try:
        for name in ("optuna", "mlflow"):
            server.createdb(name)
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """An MLflow tracking server backed by PostgreSQL, serving artifacts, on 127.0.0.1."""
    port = free_port()
    artifacts = tmp_path_factory.mktemp("artifacts")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow",
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(artifacts / "server.log", "w"),  # noqa: SIM115
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        log = (artifacts / "server.log").read_text()[-3000:]
        assert server.poll() is None and time.monotonic() < deadline, log
        time.sleep(1)
    try:
        yield url
    finally:
        stop_process_group(server)  # the server's uvicorn child too


@pytest.mark.mnist
@pytest.mark.postgres
@pytest.mark.processes
def test_two_workers_on_postgresql_and_an_mlflow_server(
    tmp_path, mnist_dir, postgres, mlflow_server
):
    path = write_study(tmp_path, "shared", space=GRID)
    storage = f"{postgres}/optuna"
    args = ["study", str(path), "--storage", storage, "--tracking-uri", mlflow_server,
            "--data-dir", str(mnist_dir)]  # fmt: skip
    done = run_cli(*args, "--workers", "2", timeout=600)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="shared", storage=storage)
    client = MlflowClient(mlflow_server)
    assert_grid_covered_once(study, client, seeds=1)
    run_id = study.best_trial.user_attrs["mlflow_run_ids"][0]
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "curves.csv"}
    again = run_cli(*args, timeout=300)  # a worker joining a finished study trains nothing
    assert again.returncode == 0 and "nothing left to train" in again.stdout


@pytest.mark.mnist
@pytest.mark.processes
def test_a_diverging_configuration_fails_its_trial_and_the_study_goes_on(tmp_path, mnist_dir):
    path = write_study(tmp_path, "diverge", space={"lr": [1e36, 5e-3]})
    out = tmp_path / "out"
    args = ["study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir)]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    stores = open_stores(out)
    study = optuna.load_study(study_name="diverge", storage=stores.storage)
    by_lr = {t.params["lr"]: t for t in study.trials}
    failed = by_lr[1e36]
    assert failed.state == TrialState.FAIL and failed.user_attrs["outcome"] == "diverged"
    assert re.match(r"train loss became (nan|inf) at iteration \d+", failed.user_attrs["message"])
    assert by_lr[5e-3].state == TrialState.COMPLETE
    client = MlflowClient(stores.tracking_uri)
    run = client.get_run(failed.user_attrs["mlflow_run_ids"][0])
    assert run.info.status == "FAILED" and "train loss became" in run.data.tags["harness.message"]
    assert run_cli(*args).returncode == 0  # a diverged point is a result: not rerun
    assert len(optuna.load_study(study_name="diverge", storage=stores.storage).trials) == 2


@pytest.mark.mnist
@pytest.mark.processes
def test_saved_weights_load_back_without_running_code(tmp_path, mnist_dir):
    path = write_study(tmp_path, "weights", space={"beta": [0.9]}, base={"save_model": True})
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    stores = open_stores(out)
    client = MlflowClient(stores.tracking_uri)
    study = optuna.load_study(study_name="weights", storage=stores.storage)
    run_id = study.trials[0].user_attrs["mlflow_run_ids"][0]
    local = client.download_artifacts(run_id, "model.pt", str(tmp_path))
    config = make_run_config({"hidden": 100, "num_steps": 10, "beta": 0.9})
    model = load_weights(local, config)
    assert model.fc1.weight.shape == (100, 784)
    evil = tmp_path / "evil.pt"
    torch.save({"fc1.weight": torch.zeros(1), "payload": print}, evil)
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_weights(str(evil), config)
