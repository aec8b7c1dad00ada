import json
import re
import subprocess
import sys

import pytest
import torch

from harness.cli import main
from harness.config import make_run_config
from harness.data.loading import Dataset, Split
from harness.training.loop import Event, StopRun, train
from tests.helpers import run_cli

SMALL = {"hidden": 100, "num_steps": 10, "batch_size": 32, "eval_every": 5, "epochs": 2}


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("decoding", ["rate", "latency"])
def test_both_backends_learn_the_synthetic_digits(tiny_dataset, backend, decoding):
    config = make_run_config({**SMALL, "backend": backend, "decoding": decoding, "lr": 2e-3})
    result = train(config, tiny_dataset)
    assert result.status == "finished"
    assert result.metrics["iterations"] == 2 * (640 // 32)
    assert result.metrics["test_accuracy"] > 0.8  # chance is 0.1
    assert result.train_loss[-1] < result.train_loss[0]
    own = "rate_accuracy" if decoding == "rate" else "latency_accuracy"
    assert result.metrics["test_accuracy"] == result.metrics[own]
    assert 0 < result.metrics["hidden_firing_rate"] < 1


def test_same_config_and_seed_give_the_same_numbers(tiny_dataset):
    config = make_run_config({**SMALL, "epochs": 1})
    first, second = train(config, tiny_dataset), train(config, tiny_dataset)
    assert first.train_loss == second.train_loss
    assert first.metrics["test_loss"] == second.metrics["test_loss"]
    other = train(config.model_copy(update={"seed": 1}), tiny_dataset)
    assert other.train_loss != first.train_loss


def test_metrics_leave_through_callbacks(tiny_dataset):
    events: list[Event] = []
    result = train(make_run_config(SMALL), tiny_dataset, callbacks=[events.append])
    train_events = [e for e in events if e.kind == "train"]
    assert [e.iteration for e in train_events] == list(range(1, 41))
    assert [e.metrics["train_loss"] for e in train_events] == result.train_loss
    assert [e.iteration for e in events if e.kind == "eval"] == list(range(5, 41, 5))
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.iteration for e in epochs] == [20, 40]
    assert epochs[-1].metrics["test_accuracy"] == result.metrics["test_accuracy"]


def test_a_callback_can_stop_the_run(tiny_dataset):
    def prune(event: Event) -> None:
        if event.kind == "eval" and event.iteration >= 10:
            raise StopRun("pruned", "below the median")

    result = train(make_run_config(SMALL), tiny_dataset, callbacks=[prune])
    assert (result.status, result.message) == ("pruned", "below the median")
    assert result.metrics["iterations"] == 10 and "test_accuracy" not in result.metrics


def test_a_nan_loss_ends_the_run_as_diverged(tiny_dataset):
    images = tiny_dataset.train.images.clone()
    images[5:40] = float("nan")
    poisoned = Dataset(Split(images, tiny_dataset.train.labels), tiny_dataset.test, "poisoned")
    result = train(make_run_config(SMALL), poisoned)
    assert result.status == "diverged"
    assert "non-finite by iteration 5" in result.message  # NaN input silences the spikes
    assert result.metrics["iterations"] == 5 and "test_accuracy" not in result.metrics


@pytest.mark.mnist
@pytest.mark.processes
def test_cli_trains_on_real_mnist_and_prints_json_last(mnist_dir):
    command = [
        sys.executable, "-m", "harness", "train", "--config", "studies/tutorial5.yaml",
        "--set", "train_subset=3840", "--set", "test_subset=1000", "--set", "decoding=latency",
        "--data-dir", str(mnist_dir), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["iterations"] == 30
    assert "not stored in MLflow or Optuna" in done.stdout  # says where its result went
    assert summary["config"]["decoding"] == "latency" and summary["backend"] == "fused"
    assert summary["test_accuracy"] == summary["latency_accuracy"] > 0.5
    assert 0 < summary["rate_accuracy"] <= 1 and summary["test_loss"] > 0
    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.mnist
@pytest.mark.processes
def test_a_loss_that_explodes_is_divergence_though_finite(mnist_dir):
    command = [
        sys.executable, "-m", "harness", "train", "--set", "lr=1e9", "--set", "train_subset=640",
        "--set", "test_subset=300", "--set", "hidden=100", "--set", "num_steps=10",
        "--set", "batch_size=32", "--data-dir", str(mnist_dir), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # not finished
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "diverged" and "test_accuracy" not in summary
    assert re.fullmatch(
        r"train loss became \S+ at iteration \d+, over 1000x the first iteration's \S+",
        summary["message"],
    )


@pytest.mark.parametrize(
    "settings", [{}, {"slope": 500}, {"beta": 0.99}, {"decoding": "latency"}, {"lr": 1e-2}]
)
def test_ordinary_settings_are_not_taken_for_divergence(tiny_dataset, settings):
    result = train(make_run_config({**SMALL, **settings}), tiny_dataset)
    assert result.status == "finished", result.message


@pytest.mark.mnist
def test_train_saves_weights_that_load_back_and_give_the_same_accuracy(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    from harness.cli import main
    from harness.config import load_run_config
    from harness.data import loading
    from harness.network.model import load_weights
    from harness.training.loop import evaluate

    settings = ["train_subset=640", "test_subset=300", "hidden=50", "num_steps=5"]
    sets = [arg for pair in settings for arg in ("--set", pair)]
    target = tmp_path / "weights" / "net.pt"
    assert main(["train", *sets, "--data-dir", str(mnist_dir), "--save-model", str(target),
                 "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["weights"] == str(target)
    config = load_run_config(target.with_suffix(".yaml"))
    assert (config.hidden, config.num_steps, config.test_subset) == (50, 5, 300)
    model = load_weights(str(target), config)
    test = loading.load(mnist_dir, torch.device("cpu"), test_subset=300).test
    assert evaluate(model, test, config)["test_accuracy"] == summary["test_accuracy"]

    # save_model: true in the config, no path: the weights go to the output folder
    monkeypatch.setenv("HARNESS_OUTPUT_DIR", str(tmp_path / "out"))
    assert main(["train", *sets, "--set", "save_model=true", "--data-dir", str(mnist_dir)]) == 0
    (saved,) = (tmp_path / "out" / "models").glob("train-*-seed0.pt")
    assert saved.with_suffix(".yaml").exists()
    assert main(["train", "--save-model", str(tmp_path)]) == 2  # a folder is not a file name


@pytest.mark.mnist
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_cli_trains_synaptic_neurons_on_rate_spikes_from_set(mnist_dir, backend, capsys):
    sets = ["neuron=synaptic", "alpha=0.8", "encoding=rate", "train_subset=512",
            "test_subset=256", "hidden=64", "num_steps=10", f"backend={backend}"]  # fmt: skip
    flags = [flag for setting in sets for flag in ("--set", setting)]
    assert main(["train", *flags, "--data-dir", str(mnist_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = summary["config"]
    assert (config["neuron"], config["alpha"], config["encoding"]) == ("synaptic", 0.8, "rate")
    assert summary["status"] == "finished" and summary["backend"] == backend
    assert summary["test_accuracy"] > 0.2  # 4 iterations of 128 on spikes: above chance


@pytest.mark.mnist
@pytest.mark.processes
def test_train_with_track_logs_the_run_to_mlflow_like_a_study(mnist_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    done = run_cli(
        "train", "--config", "studies/tutorial5.yaml", "--set", "train_subset=1280",
        "--set", "test_subset=500", "--set", "beta=0.9", "--track", "--output-dir", str(out),
        "--data-dir", str(mnist_dir), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    said = done.stdout.strip().splitlines()[-2]
    assert said == (
        f"logged to MLflow: run 'train_subset=1280 test_subset=500 beta=0.9 seed 0' "
        f"({summary['mlflow_run_id']}) in the experiment 'harness train' of the tracking "
        f"database {out / 'mlflow.db'} (make ui to browse)"
    )
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("harness train")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.info.run_name == "train_subset=1280 test_subset=500 beta=0.9 seed 0"
    assert run.data.tags["harness.status"] == "finished"
    assert run.data.params["beta"] == "0.9" and run.data.params["train_subset"] == "1280"
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert run.data.metrics["iterations"] == summary["iterations"] == 10
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, 11))
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [
        "mnist-train-1280",
        "mnist-test-500",
    ]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.csv"} <= artifacts
    assert not (out / "optuna.journal").exists()  # no study: nothing in Optuna
