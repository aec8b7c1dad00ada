"""MLflow: one experiment per study; per trial (configuration) a parent run holding the mean
and sd over seeds, with one child run per seed; metrics logged in batches.

Metric `test_loss` is the loss on a test batch at each evaluation (the tutorial's test curve)
and on the whole test set at the end of each epoch, so its latest value is the full one.

`RunLogger` is a training callback: it buffers the per-iteration metrics and sends them with
`log_batch` (one database round trip per batch instead of one per value), then ends the run
with a status that says how training ended: FINISHED, FAILED (diverged, crashed) or KILLED
(interrupted). A pruned run ends FINISHED with the tag `harness.status = pruned`.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import logging
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.study.tags import (
    BACKEND_TAG,
    COMMIT_TAG,
    DEVICE_TAG,
    MESSAGE_TAG,
    STATUS_TAG,
    VERSION_TAG,
)

# MLflow 3 starts a telemetry thread at import that calls out to the network; a benchmark
# harness should neither phone home nor share its CPU with that. The user can still opt in.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow logs each database error with its traceback before raising it; the harness reports
# the error itself, in one line where it knows it (a full disk, say).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

from mlflow.entities import (  # noqa: E402
    Dataset,
    DatasetInput,
    InputTag,
    Metric,
    Param,
    Run,
    RunTag,
)
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from harness import __version__  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.training.metrics import METRICS  # noqa: E402

if TYPE_CHECKING:
    from harness.data.loading import Dataset as Data
    from harness.stores.opening import Stores
    from harness.training.loop import Event, RunResult

FLUSH_EVERY = 500  # buffered metric values per log_batch call (MLflow accepts up to 1000)
FLUSH_SECONDS = 15.0  # ... or sooner, so the UI shows a long run's progress
RUN_STATUS = {
    "finished": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FAILED",
    "interrupted": "KILLED",
    "taken": "KILLED",
}
SEARCH_PAGE = 1000  # runs per search_runs call (MLflow's maximum for one page)


def git_commit() -> str:
    """The checkout's commit (with '+dirty' for local changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def experiment_id(
    client: MlflowClient, name: str, artifact_root: Path | None, tags: dict[str, str] | None = None
) -> str:
    """The experiment of a study, created on first use, with `tags` set (description,
    primary metric) where they differ."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (artifact_root / name).resolve().as_uri() if artifact_root else None
        try:
            client.create_experiment(name, artifact_location=location)
        except MlflowException as err:  # another worker created it first
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)
    elif experiment.lifecycle_stage == "deleted":  # deleted in the UI, and the study rerun
        client.restore_experiment(experiment.experiment_id)
    for key, value in (tags or {}).items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# MLflow 3's UI opens an experiment in the mode this tag names; without it, an experiment
# with no runs yet opens in "GenAI" mode, with its assistant panel. The UI reads the tag
# "mlflow.experimentKind" (its bundle, mlflow/server/js/build: ExperimentKind
# CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"; MLflow's own demo data sets
# "genai_development" the same way, mlflow/demo/generators/traces.py).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_tags(description: str, metric: str, direction: str) -> dict[str, str]:
    """What MLflow's UI shows of an experiment: its description and primary metric, and the
    model-training mode it opens in."""
    return {
        EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
        "mlflow.note.content": description.strip(),
        "mlflow.experiment.primaryMetric.name": metric,
        "mlflow.experiment.primaryMetric.greaterIsBetter": str(direction == "maximize").lower(),
    }


def check_description(name: str, description: str) -> None:
    """ConfigError if a study's description is longer than MLflow keeps in the experiment's
    description tag (checked before any store is opened, so nothing is written)."""
    from mlflow.utils.validation import MAX_EXPERIMENT_TAG_VAL_LENGTH as LIMIT

    length = len(description.strip())
    if length > LIMIT:
        raise ConfigError(
            f"study '{name}': 'description' is {length:,} characters, MLflow keeps at most "
            f"{LIMIT:,} in an experiment's description: shorten it"
        )


def source_tags(commit: str, entry: str) -> dict[str, str]:
    """MLflow's standard source tags: the command, the user, and the git commit (the harness's
    own `harness.commit` tag also says whether the checkout had local changes)."""
    tags = {
        "mlflow.source.name": entry,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
    return tags


def dataset_inputs(name: str, checksum: str, rows: dict[str, int]) -> list[DatasetInput]:
    """The data a run trained and was evaluated on, as MLflow dataset inputs (the UI's
    Dataset column): one per split, its digest the data's checksum, its context the use."""
    contexts = {"train": "training", "test": "evaluation"}
    return [
        DatasetInput(
            Dataset(
                name=f"{name}-{split}-{count}",
                digest=checksum[:36],
                source_type="local",
                source=json.dumps({"files": f"{name} idx files", "md5": checksum}),
                profile=json.dumps({"num_rows": count}),
            ),
            tags=[InputTag("mlflow.data.context", contexts[split])],
        )
        for split, count in rows.items()
    ]


def start_parent_run(
    client: MlflowClient,
    experiment: str,
    run_name: str,
    tags: dict[str, Any],
    params: dict[str, Any],
    inputs: list[DatasetInput],
) -> str:
    """Create the parent run of one configuration (a trial): its params and data; the
    seeds' runs become its children (tag `mlflow.parentRunId`)."""
    tags = {key: str(value) for key, value in {VERSION_TAG: __version__, **tags}.items()}
    run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    client.log_inputs(run_id, datasets=inputs)
    return run_id


def finish_parent_run(
    client: MlflowClient, run_id: str, runs: list[dict[str, Any]], status: str, message: str = ""
) -> None:
    """End a configuration's parent run: the mean and sd over its finished seeds of every
    final metric (`test_accuracy_mean`, `test_accuracy_sd`, ..., rounded for display: the
    statistics read the seeds' runs), and how it ended."""
    finished = [run for run in runs if run.get("status") == "finished"]
    metrics = [Metric("seeds", float(len(finished)), _now_ms(), 0)]
    for key in METRICS:
        values = [float(run[key]) for run in finished if key in run]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            # two decimals beyond the table's: MLflow's UI shows a float32 mean as 0.93549999
            digits = METRICS[key].digits + 2
            metrics.append(
                Metric(f"{key}_mean", round(statistics.fmean(values), digits), _now_ms(), 0)
            )
            metrics.append(Metric(f"{key}_sd", round(sd, digits), _now_ms(), 0))
    tags = [RunTag(STATUS_TAG, status)]
    if message:
        tags.append(RunTag(MESSAGE_TAG, message[:5000]))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.set_terminated(run_id, status=RUN_STATUS.get(status, "FAILED"))


def search_all_runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list[Run]:
    """Every run of an experiment that matches the filter, page by page (one call returns at
    most SEARCH_PAGE runs)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment], filter_string, max_results=SEARCH_PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _now_ms() -> int:
    return int(time.time() * 1000)


class RunLogger:
    """Streams one training run's events into an MLflow run (a callback for `train`)."""

    def __init__(
        self,
        client: MlflowClient,
        experiment: str,
        run_name: str,
        tags: dict[str, Any],
        parent_run_id: str | None = None,
    ):
        self.client = client
        if parent_run_id is not None:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        tags = {key: str(value) for key, value in {VERSION_TAG: __version__, **tags}.items()}
        self.run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
        self._buffer: list[Metric] = []
        self._flushed = time.monotonic()

    def log_config(self, config: dict[str, Any], inputs: list[DatasetInput] = ()) -> None:
        """All run settings as params (a model's `model_args` one param each, as
        model_args.NAME), and as a YAML artifact; the data as dataset inputs."""
        flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
        for key, value in config.items():
            if isinstance(value, dict):
                flat.update({f"{key}.{name}": arg for name, arg in value.items()})
        params = [Param(key, str(value)) for key, value in flat.items()]
        self.client.log_batch(self.run_id, params=params)
        if inputs:
            self.client.log_inputs(self.run_id, datasets=list(inputs))
        self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")

    def __call__(self, event: Event) -> None:
        stamp = _now_ms()
        if event.kind == "epoch":  # the full test set's figures replace that step's estimate
            self._buffer = [
                m for m in self._buffer if m.step != event.iteration or m.key not in event.metrics
            ]
        self._buffer.extend(
            Metric(key, float(value), stamp, event.iteration)
            for key, value in event.metrics.items()
        )
        if (
            event.kind == "epoch"
            or len(self._buffer) >= FLUSH_EVERY
            or time.monotonic() - self._flushed > FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        self._flushed = time.monotonic()
        while self._buffer:
            batch, self._buffer = self._buffer[:FLUSH_EVERY], self._buffer[FLUSH_EVERY:]
            self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, result: RunResult) -> None:
        """Log the final figures and curves, then end the run with the result's status."""
        self.flush()
        metrics = [
            Metric(key, float(result.metrics[key]), _now_ms(), int(result.metrics["iterations"]))
            for key in ("train_seconds", "iterations")
        ]
        tags = [RunTag(STATUS_TAG, result.status)]
        if result.message:
            tags.append(RunTag(MESSAGE_TAG, result.message[:5000]))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.log_text(self.run_id, curves_csv(result), "curves.csv")
        if result.state_dict is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.pt"
                import torch  # only to write the weights a run keeps

                torch.save(result.state_dict, path)
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=RUN_STATUS.get(result.status, "FAILED"))

    def abort(self, status: str, message: str) -> None:
        """End the run as FAILED or KILLED after an exception or an interruption."""
        try:
            self.flush()
            self.client.set_tag(self.run_id, STATUS_TAG, status.lower())
            self.client.set_tag(self.run_id, MESSAGE_TAG, message[:5000])
        finally:
            self.client.set_terminated(self.run_id, status=status)


# The experiment of `harness train --track`: single runs, outside any study.
SINGLE_RUNS = "harness train"
SINGLE_RUNS_DESCRIPTION = (
    "Single runs of `harness train --track` (one configuration and seed each, outside any "
    "study: no seeds to compare them over). A study keeps its own experiment."
)


def start_single_run(
    stores: Stores, config: dict[str, Any], data: Data, run_name: str, device: str
) -> RunLogger:
    """An MLflow run for one `harness train`, in the experiment SINGLE_RUNS (created on first
    use, under the stores' set-up lock), with its settings, data and source logged."""
    with stores.setup_lock():
        stores.create_tracking_tables()
        client = stores.client()
        tags = experiment_tags(SINGLE_RUNS_DESCRIPTION, "test_accuracy", "maximize")
        experiment = experiment_id(client, SINGLE_RUNS, stores.artifact_root, tags)
    commit = git_commit()
    run_tags = {
        **source_tags(commit, "harness train"),
        BACKEND_TAG: config["backend"],
        DEVICE_TAG: device,
        COMMIT_TAG: commit,
    }
    logger = RunLogger(client, experiment, run_name, run_tags)
    rows = {"train": len(data.train), "test": len(data.test)}
    logger.log_config(config, dataset_inputs(data.name, data.checksum, rows))
    return logger


def curves_csv(result: RunResult) -> str:
    """Train and test loss curves as one CSV: iteration, train_loss, test_loss."""
    test = dict(result.test_loss)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["iteration", "train_loss", "test_loss"])
    for iteration, value in enumerate(result.train_loss, start=1):
        writer.writerow([iteration, value, test.get(iteration, "")])
    return out.getvalue()
