"""Studies through the CLI, at smoke scale, against real Optuna and MLflow stores."""

import re
import signal
import statistics
import subprocess
import sys
import urllib.error
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from harness.cli import main
from harness.config import load_study
from harness.errors import ConfigError
from tests.helpers import (
    ROOT,
    SLOW,
    chromium_page,
    free_port,
    run_cli,
    seed_runs,
    start_study,
    stores_of,
    wait_for_json,
    wait_for_running_run,
    write_study,
)


@pytest.mark.mnist
@pytest.mark.processes
def test_grid_runs_each_point_once_and_links_trials_to_runs(tmp_path, mnist_dir):
    path = write_study(tmp_path, "grid", space={"beta": [0.8, 0.95]}, seeds=[0, 3])
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trial ") >= 2 and "test accuracy" in done.stdout
    for beta in (0.8, 0.95):  # a line a seed's run as it ends, then the configuration's
        seed_lines = [x for x in done.stdout.splitlines() if x.startswith(f"  beta={beta} seed")]
        assert [x.split(":")[0] for x in seed_lines] == [f"  beta={beta} seed {s}" for s in (0, 3)]
        assert all(
            re.search(r": test_accuracy 0\.\d{4} \(train \d+\.\d s\)$", x) for x in seed_lines
        )
    assert sorted(p.name for p in out.glob("mlflow.db*")) == ["mlflow.db"]  # log checkpointed
    experiment_tags = stores_of(out)[1].get_experiment_by_name("grid").tags
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"

    stores, client = stores_of(out)
    study = optuna.load_study(study_name="grid", storage=stores.storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["beta"] for t in study.trials) == [0.8, 0.95]
    experiment = client.get_experiment_by_name("grid")
    assert experiment.tags["mlflow.note.content"] == ""  # the file has no description
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "test_accuracy"
    assert experiment.tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "true"
    runs = seed_runs(client, "grid")
    parents = {r.info.run_id: r for r in seed_runs(client, "grid", parents=True)}
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len(parents) == 2 and {r.info.status for r in parents.values()} == {"FINISHED"}
    by_id = {r.info.run_id: r for r in runs}
    for trial in study.trials:
        ids = trial.user_attrs["mlflow_run_ids"]
        assert len(ids) == 2
        parent = parents[trial.user_attrs["mlflow_parent_run_id"]]
        assert parent.info.run_name == f"t{trial.number:03d} beta={trial.params['beta']}"
        assert parent.data.params["beta"] == str(trial.params["beta"])
        assert "seed" not in parent.data.params
        accuracies = [by_id[i].data.metrics["test_accuracy"] for i in ids]
        assert parent.data.metrics["test_accuracy_mean"] == round(trial.value, 6)  # (display)
        assert parent.data.metrics["test_accuracy_sd"] == round(statistics.stdev(accuracies), 6)
        assert parent.data.metrics["seeds"] == 2
        for seed, run_id in zip([0, 3], ids, strict=True):
            run = by_id[run_id]
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.tags["mlflow.source.name"] == "harness study grid"
            assert run.data.tags["mlflow.source.git.commit"] in run.data.tags["harness.commit"]
            inputs = {
                (d.dataset.name, d.dataset.digest, d.tags[0].value)
                for d in run.inputs.dataset_inputs
            }
            checksum = run.data.tags["harness.data_checksum"]
            assert inputs == {
                ("mnist-train-640", checksum, "training"),
                ("mnist-test-300", checksum, "evaluation"),
            }
            assert run.info.run_name == f"beta={trial.params['beta']} seed {seed}"
            assert run.data.tags["harness.trial"] == str(trial.number)
            assert run.data.tags["harness.seed"] == str(seed)
            assert run.data.params["beta"] == str(trial.params["beta"])
            assert run.data.params["seed"] == str(seed)
            history = client.get_metric_history(run_id, "train_loss")
            assert [m.step for m in history] == list(range(1, 21))
            test_loss = client.get_metric_history(run_id, "test_loss")
            assert [m.step for m in test_loss] == [5, 10, 15, 20]  # the last: full test set
            assert test_loss[-1].value == pytest.approx(run.data.metrics["test_loss"])
            for key in ("test_accuracy", "rate_accuracy", "latency_accuracy",
                        "hidden_firing_rate", "train_seconds"):  # fmt: skip
                assert key in run.data.metrics, key
            paths = {a.path for a in client.list_artifacts(run_id)}
            assert paths == {"config.yaml", "curves.csv"}
        mean = sum(by_id[i].data.metrics["test_accuracy"] for i in ids) / 2
        assert trial.value == pytest.approx(mean)

    again = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert again.returncode == 0 and "trial " not in again.stdout.split("trial  configuration")[0]
    assert len(seed_runs(client, "grid")) == 4  # nothing trained again


@pytest.mark.mnist
@pytest.mark.processes
def test_an_interrupted_grid_resumes_with_what_is_left(tmp_path, mnist_dir):
    path = write_study(tmp_path, "resume", space={"beta": [0.7, 0.8, 0.9]})
    out = tmp_path / "out"
    first = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir),
                    "--max-trials", "1")  # fmt: skip
    assert first.returncode == 0, first.stderr
    stores, client = stores_of(out)
    study = optuna.load_study(study_name="resume", storage=stores.storage)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 1
    second = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name="resume", storage=stores.storage)
    assert sorted(t.params["beta"] for t in study.trials) == [0.7, 0.8, 0.9]
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert len(seed_runs(client, "resume")) == 3


@pytest.mark.mnist
@pytest.mark.processes
def test_a_pruned_trial_is_recorded_in_optuna_and_mlflow(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "prune", space={"lr": [5e-3, 1e-9]},
        pruner={"type": "median", "interval": 5, "warmup_steps": 0, "startup_trials": 1},
    )  # fmt: skip
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    stores, client = stores_of(out)
    study = optuna.load_study(study_name="prune", storage=stores.storage)
    states = {t.params["lr"]: t for t in study.trials}
    assert states[5e-3].state == TrialState.COMPLETE
    pruned = states[1e-9]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values
    (run_id,) = pruned.user_attrs["mlflow_run_ids"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["harness.status"] == "pruned"
    assert run.data.metrics["iterations"] < 20 and "test_accuracy" not in run.data.metrics


BAD_STUDIES = [
    ({"space": {"beta": []}}, "space.beta: empty list"),
    ({"space": {"beta": [1.5]}}, "'beta'"),
    ({"space": {"betta": [0.5]}}, "space.betta: not a run setting"),
    ({"space": {"beta": {"low": 0.9, "high": 0.5}}, "sampler": "tpe", "n_trials": 2}, "low 0.9"),
    ({"space": {"beta": [0.5]}, "sampler": "annealing"}, "'sampler'"),
    ({"space": {"beta": [0.5]}, "pruner": {"type": "asha"}}, "'pruner.type'"),
    ({"space": {"beta": [0.5]}, "colour": "red"}, "unknown key 'colour'"),
    ({"space": {"beta": {"low": 0.5, "high": 0.9}}}, "a grid needs a list"),
    ({"space": {"beta": [0.5]}, "seeds": 0}, "'seeds'"),
    ({"space": {"beta": [0.5]}, "base": {"num_steps": 0}}, "'num_steps'"),
]


@pytest.mark.parametrize(("fields", "fragment"), BAD_STUDIES)
def test_invalid_study_files_are_rejected_before_any_store_is_touched(
    tmp_path, fields, fragment, capsys
):
    path = write_study(tmp_path, "bad", **fields)
    out = tmp_path / "out"
    assert main(["study", str(path), "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert fragment in captured.err and str(path) in captured.err
    assert not out.exists()


def test_an_unknown_study_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*beta_sweep"):
        load_study("no_such_study", ROOT / "studies")


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "studies").glob("*.yaml")))
def test_shipped_studies_are_valid(name):
    study = load_study(name, ROOT / "studies")
    assert study.name == name and study.description
    if study.sampler == "grid":
        assert len(study.grid()) >= 1


def test_study_grid_and_seeds():
    study = load_study("slope_sweep", ROOT / "studies")
    grid = study.grid()
    assert len(grid) == 12 and grid[0] == {"surrogate": "atan", "slope": 0.5}
    assert study.seed_list == [0, 1, 2] and study.all_seeds == list(range(6))
    config = study.run_config(grid[-1], seed=1)
    assert (config.surrogate, config.slope, config.seed) == ("fast_sigmoid", 500, 1)
    assert load_study("beta_sweep", ROOT / "studies").seed_list == [0, 1, 2]


@pytest.mark.chromium
@pytest.mark.mnist
@pytest.mark.processes
def test_ui_shows_configurations_with_their_seeds_and_the_description(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "ui", space={"beta": [0.8, 0.9]}, seeds=2, description="Two betas, two seeds each"
    )  # fmt: skip
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--output-dir", str(out), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        link = f"http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning"
        assert link in server.stdout.readline()  # the model-training view, not GenAI's
        base = f"http://127.0.0.1:{port}"
        experiments = wait_for_json(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui"
        )
        experiment_id = experiments["experiment"]["experiment_id"]
        tags = {t["key"]: t["value"] for t in experiments["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        with chromium_page(1600, 1000) as page:
            page.goto(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
            parent = page.get_by_text("t000 beta=0.8", exact=True)
            parent.wait_for(timeout=90_000)
            assert page.get_by_text("t001 beta=0.9", exact=True).is_visible()
            # the model-training view (without the link's workflowType: GenAI's, whose side bar
            # lists Observability and Prompts & versions)
            assert page.get_by_text("Observability").count() == 0
            assert page.get_by_text("Prompts & versions").count() == 0
            assert page.get_by_text("Two betas, two seeds each").first.is_visible()
            assert page.get_by_text("mnist-train-640").first.is_visible()  # Dataset column
            assert page.get_by_text("6 matching runs").is_visible()
            assert page.get_by_text("beta=0.8 seed 1").count() == 0  # seeds folded under it
            cell = parent.locator("xpath=ancestor::*[@role='gridcell'][1]")
            cell.locator("button").first.click()  # unfold the configuration
            page.get_by_text("beta=0.8 seed 1", exact=True).wait_for(timeout=30_000)
            assert page.get_by_text("beta=0.8 seed 0", exact=True).is_visible()
            assert page.get_by_text("beta=0.9 seed 0").count() == 0
    finally:
        server.terminate()
        server.wait(timeout=60)
    with pytest.raises(OSError):  # stopping the UI stopped the server it started
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.mnist
@pytest.mark.processes
def test_a_killed_study_resumes_with_consistent_stores(tmp_path, mnist_dir):
    """kill -9 during training (signals and other kill points: tests/test_faults.py)."""
    path = write_study(tmp_path, "killed", base=SLOW, space={"beta": [0.8, 0.9]})
    out = tmp_path / "out"
    process = start_study(path, out, mnist_dir)
    killed_run = wait_for_running_run(out, "killed")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode != 0
    stores, client = stores_of(out)

    resumed = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "had lost their worker" in resumed.stdout
    study = optuna.load_study(study_name="killed", storage=stores.storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["beta"] for t in complete) == [0.8, 0.9]
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 1
    assert {t.state for t in study.trials} == {TrialState.COMPLETE, TrialState.FAIL}
    for parents in (False, True):
        runs = seed_runs(client, "killed", parents)
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]
    assert client.get_run(killed_run).info.status == "KILLED"


@pytest.mark.mnist
@pytest.mark.processes
def test_a_store_written_by_the_previous_run_layout_reports_and_resumes(tmp_path, mnist_dir):
    """tests/fixtures/legacy_store: a study half run by the harness before parent runs (flat
    runs, one per seed), as SQL and journal text; the current one must resume and report it."""
    import sqlite3

    from harness.report import aggregate

    fixture = ROOT / "tests" / "fixtures" / "legacy_store"
    out = tmp_path / "out"
    out.mkdir()
    with sqlite3.connect(out / "mlflow.db") as db:
        db.executescript((fixture / "mlflow.sql").read_text().replace("@OUT@", str(out)))
    journal = (fixture / "optuna.journal").read_text().replace("@OUT@", str(out))
    (out / "optuna.journal").write_text(journal)
    path = tmp_path / "legacy.yaml"
    path.write_text((fixture / "legacy.yaml").read_text())

    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    assert (
        "trial   1 beta=0.9" in done.stdout and "trial   0" not in done.stdout.split("trial  ")[0]
    )
    stores, client = stores_of(out)
    study = optuna.load_study(study_name="legacy", storage=stores.storage)
    old, new = study.trials
    assert "mlflow_parent_run_id" not in old.user_attrs and new.user_attrs["mlflow_parent_run_id"]
    data = aggregate.load(load_study(str(path)), study, client)
    table = aggregate.configurations(data)
    assert list(table["seeds"]) == [2, 2] and sorted(table["beta"]) == [0.8, 0.9]
    for trial in (old, new):
        row = table[table["beta"] == trial.params["beta"]].iloc[0]
        assert row["test_accuracy_mean"] == pytest.approx(trial.value)
    report = main(["report", str(path), "--output-dir", str(out),
                   "--reports-dir", str(tmp_path / "reports")])  # fmt: skip
    assert report == 0  # the report builds from both layouts
    assert "4 finished" in (tmp_path / "reports" / "legacy" / "index.html").read_text()
