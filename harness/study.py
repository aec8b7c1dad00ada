"""Studies: Optuna drives a study file's configurations; every (configuration, seed) is one
training run, logged to MLflow.

A trial is one configuration; its seeds run inside it and its value is the mean objective
over them. A grid study enqueues each point once, and workers pop them from Optuna's queue,
so a point is trained once however many workers share the study. A search asks the sampler
until `n_trials` trials have finished. Rerunning a study resumes it: finished points are kept,
a trial whose worker died is marked FAIL (its MLflow runs KILLED) and its point runs again.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import data
from harness.config import INT_KEYS, Choices, StudyConfig
from harness.stores import Stores
from harness.tracking import RunLogger, experiment_id, git_commit
from harness.train import Event, StopRun, resolve_device, train

STALE_SECONDS = 120.0  # a RUNNING trial whose worker has not reported for this long is dead
HEARTBEAT_SECONDS = 20.0
PRUNE_PROXY = {"test_loss": "test_loss"}  # accuracies are estimated on the test batch
OUTCOME = "outcome"  # trial user attribute: finished | pruned | diverged | interrupted | ...


def _sampler(study: StudyConfig) -> optuna.samplers.BaseSampler:
    seed = study.sampler_seed
    if study.sampler == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=min(10, study.n_trials or 10), seed=seed)
    if study.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # a grid's points come from the queue


def _pruner(study: StudyConfig) -> optuna.pruners.BasePruner:
    settings = study.pruner
    if settings.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_steps
        )
    if settings.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, settings.warmup_steps))
    return optuna.pruners.NopPruner()


def open_study(config: StudyConfig, stores: Stores) -> optuna.Study:
    """Create or load the Optuna study of a study file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=config.name,
        storage=stores.storage,
        direction=config.objective.direction,
        sampler=_sampler(config),
        pruner=_pruner(config),
        load_if_exists=True,
    )
    study.set_user_attr("description", config.description)
    study.set_user_attr("config", config.model_dump(mode="json"))
    return study


def grid_key(params: dict[str, Any]) -> str:
    """A grid point's identity, kept as the trial's user attribute `grid_point`."""
    return json.dumps(params, sort_keys=True)


def _alive(trial: optuna.trial.FrozenTrial) -> bool:
    """Is the worker of a RUNNING trial still there? Its heartbeat is recent and, on this
    host, its process exists (so a killed worker is seen at once)."""
    attrs = trial.user_attrs
    if attrs.get("host") == socket.gethostname() and "pid" in attrs:
        try:
            os.kill(int(attrs["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    beat = attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and time.time() - float(beat) < STALE_SECONDS


def fail_stale_trials(study: optuna.Study, client: MlflowClient) -> list[int]:
    """Mark trials whose worker died FAIL, and end their MLflow runs that still run KILLED."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(trial):
            continue
        for run_id in trial.user_attrs.get("mlflow_run_ids", []):
            run = client.get_run(run_id)
            if run.info.status == "RUNNING":
                client.set_tag(run_id, "harness.status", "killed")
                client.set_terminated(run_id, status="KILLED")
        study.tell(trial.number, state=TrialState.FAIL)
        failed.append(trial.number)
    return failed


def point_done(trial: optuna.trial.FrozenTrial) -> bool:
    """Has this trial settled its grid point (complete, pruned, or diverged: a result too)?"""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) == "diverged"


def _covered(trial: optuna.trial.FrozenTrial) -> bool:
    """Does this trial account for its grid point (done, being done, or queued)?"""
    return point_done(trial) or trial.state in (TrialState.RUNNING, TrialState.WAITING)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards a search's n_trials (not the ones a worker skipped)."""
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=ended)
        if t.user_attrs.get(OUTCOME) != "skipped"
    ]


def enqueue_grid(study: optuna.Study, config: StudyConfig) -> int:
    """Queue every grid point that no trial covers yet; return how many were queued."""
    covered = {
        t.user_attrs.get("grid_point") for t in study.get_trials(deepcopy=False) if _covered(t)
    }
    todo = [point for point in config.grid() if grid_key(point) not in covered]
    for point in todo:
        study.enqueue_trial(point, user_attrs={"grid_point": grid_key(point)})
    return len(todo)


def _suggest(trial: optuna.Trial, config: StudyConfig) -> dict[str, Any]:
    params = {}
    for key, space in config.space.items():
        if isinstance(space, list | Choices):
            options = space.choices if isinstance(space, Choices) else space
            params[key] = trial.suggest_categorical(key, options)
        elif key in INT_KEYS:
            step = int(space.step or 1)
            params[key] = trial.suggest_int(
                key, int(space.low), int(space.high), step=step, log=space.log
            )
        else:
            params[key] = trial.suggest_float(
                key, space.low, space.high, step=space.step, log=space.log
            )
    return params


def _next_trial(study: optuna.Study, config: StudyConfig) -> optuna.Trial | None:
    """The next trial this worker should run, or None when the study needs nothing more."""
    if config.sampler == "grid":
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        trial = study.ask()
        point = trial.user_attrs.get("grid_point")
        taken = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        others = [
            t
            for t in study.get_trials(deepcopy=False, states=taken)
            if t.number != trial.number and t.user_attrs.get("grid_point") == point
        ]
        if point is None or others:  # another worker took the last point first
            trial.set_user_attr(OUTCOME, "skipped")
            study.tell(trial, state=TrialState.FAIL)
            return _next_trial(study, config)
        return trial
    if len(finished_trials(study)) >= (config.n_trials or 0):
        return None
    return study.ask()


class _TrialReporter:
    """Training callback: heartbeats into the trial, and reports for pruning."""

    def __init__(self, trial: optuna.Trial, config: StudyConfig, offset: int, prune: bool):
        self.trial, self.offset, self.prune = trial, offset, prune
        self.interval = config.pruner.interval
        self.proxy = PRUNE_PROXY.get(config.objective.metric, "test_batch_accuracy")
        self.beat = time.time()

    def __call__(self, event: Event) -> None:
        if event.kind != "eval":
            return
        if time.time() - self.beat > HEARTBEAT_SECONDS:
            self.beat = time.time()
            self.trial.set_user_attr("heartbeat", self.beat)
        if not self.prune or event.iteration % self.interval:
            return
        value = event.metrics[self.proxy]
        self.trial.report(value, self.offset + event.iteration)
        if self.trial.should_prune():
            raise StopRun(
                "pruned", f"pruned at iteration {event.iteration} ({self.proxy} {value:.4f})"
            )


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    config: StudyConfig,
    client: MlflowClient,
    experiment: str,
    dataset: data.Dataset,
    progress: bool,
) -> None:
    """Train every seed of one configuration, log each run, and tell Optuna the outcome."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("heartbeat", time.time())
    params = _suggest(trial, config)
    run_ids: list[str] = []
    runs: list[dict[str, Any]] = []
    commit = git_commit()
    for index, seed in enumerate(config.seed_list):
        run_config = config.run_config(params, seed)
        device = resolve_device(run_config.device)
        split = _subset(dataset, run_config)
        logger = RunLogger(
            client,
            experiment,
            f"{config.name}/t{trial.number:03d}/s{seed}",
            {
                "harness.study": config.name,
                "harness.trial": trial.number,
                "harness.seed": seed,
                "harness.backend": run_config.backend,
                "harness.device": str(device),
                "harness.commit": commit,
                "harness.data_checksum": dataset.checksum,
                "optuna.study": study.study_name,
                "optuna.trial_number": trial.number,
            },
        )
        run_ids.append(logger.run_id)
        trial.set_user_attr("mlflow_run_ids", run_ids)
        logger.log_config(run_config.model_dump())
        per_run = run_config.epochs * (len(split.train) // run_config.batch_size)
        reporter = _TrialReporter(trial, config, index * per_run, config.pruner.type != "none")
        try:
            result = train(run_config, split, [logger, reporter], progress=progress)
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
            logger.abort("KILLED" if interrupted else "FAILED", repr(err))
            trial.set_user_attr(OUTCOME, "interrupted" if interrupted else "error")
            trial.set_user_attr("message", repr(err)[:1000])
            study.tell(trial, state=TrialState.FAIL)
            raise
        logger.finish(result)
        runs.append(
            {"seed": seed, "run_id": logger.run_id, "status": result.status, **result.metrics}
        )
        trial.set_user_attr("runs", runs)
        if result.status != "finished":
            trial.set_user_attr(OUTCOME, result.status)
            trial.set_user_attr("message", result.message)
            state = TrialState.PRUNED if result.status == "pruned" else TrialState.FAIL
            study.tell(trial, state=state)
            return
    trial.set_user_attr(OUTCOME, "finished")
    study.tell(trial, statistics.fmean(run[config.objective.metric] for run in runs))


def _subset(dataset: data.Dataset, config) -> data.Dataset:
    train_split = data.subset(
        dataset.train, config.train_subset, config.subset_sampling, config.seed
    )
    test_split = data.subset(dataset.test, config.test_subset, config.subset_sampling, config.seed)
    return data.Dataset(train_split, test_split, dataset.checksum)


def prepare_study(config: StudyConfig, stores: Stores) -> tuple[MlflowClient, str, optuna.Study]:
    """Create or load the experiment and the study, fail trials whose worker died, and
    queue the grid points nobody covers; under the set-up lock of the embedded stores."""
    with stores.setup_lock():
        stores.create_tracking_tables()
        client = MlflowClient(stores.tracking_uri)
        experiment = experiment_id(client, config.name, stores.artifact_root)
        study = open_study(config, stores)
        stale = fail_stale_trials(study, client)
        if config.sampler == "grid":
            enqueue_grid(study, config)
    if stale:
        print(f"trials {stale} had lost their worker: marked FAIL, their runs KILLED", flush=True)
    return client, experiment, study


def run_study(
    config: StudyConfig,
    stores: Stores,
    data_dir: Path | None = None,
    progress: bool = True,
    max_trials: int | None = None,
) -> optuna.Study:
    """Create or resume the study and run trials until it needs no more (or `max_trials`)."""
    device = resolve_device(config.base_config.device)
    dataset = data.load(data_dir, device)
    client, experiment, study = prepare_study(config, stores)
    done = 0
    while max_trials is None or done < max_trials:
        trial = _next_trial(study, config)
        if trial is None:
            break
        start = time.perf_counter()
        run_trial(study, trial, config, client, experiment, dataset, progress)
        done += 1
        frozen = study.trials[trial.number]
        print(_trial_line(config, frozen, time.perf_counter() - start), flush=True)
    return study


def _trial_line(config: StudyConfig, trial: optuna.trial.FrozenTrial, seconds: float) -> str:
    outcome = trial.user_attrs.get(OUTCOME, trial.state.name.lower())
    head = f"trial {trial.number:3d} {_params_text(trial.params)}"
    if trial.state == TrialState.COMPLETE:
        return f"{head}: {config.objective.metric} {trial.value:.4f} ({seconds:.1f} s)"
    return f"{head}: {outcome} {trial.user_attrs.get('message', '')} ({seconds:.1f} s)"


def trained_seconds_since(
    study: optuna.Study, since: float, this_process: bool = True
) -> tuple[int, float]:
    """Runs finished after `since` (a Unix time), by this process or by any, and the seconds
    they spent training."""
    runs = [
        run
        for trial in study.get_trials(deepcopy=False)
        if trial.datetime_complete is not None
        and trial.datetime_complete.timestamp() >= since
        and (not this_process or trial.user_attrs.get("pid") == os.getpid())
        for run in trial.user_attrs.get("runs", [])
    ]
    return len(runs), sum(run["train_seconds"] for run in runs)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(study: optuna.Study, config: StudyConfig) -> list[dict[str, Any]]:
    """One row per configuration that ran: its params and seed statistics."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        runs = [r for r in trial.user_attrs.get("runs", []) if "test_accuracy" in r]
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) or not (
            runs or trial.user_attrs.get(OUTCOME) in ("pruned", "diverged")
        ):
            continue

        rows.append(
            {
                "trial": trial.number,
                "params": trial.params,
                "outcome": trial.user_attrs.get(OUTCOME, trial.state.name.lower()),
                "seeds": len(runs),
                "test_accuracy": _mean_sd([r["test_accuracy"] for r in runs]),
                "test_loss": _mean_sd([r["test_loss"] for r in runs]),
                "train_seconds": _mean_sd([r["train_seconds"] for r in runs])[0],
            }
        )
    return rows


def format_table(study: optuna.Study, config: StudyConfig) -> str:
    """The end-of-study table: configuration, mean and sd over seeds, time."""
    rows = summary_rows(study, config)
    if not rows:
        return "no finished configurations yet"
    width = max(len(_params_text(r["params"])) for r in rows)
    lines = [
        f"{'trial':>5}  {'configuration':<{width}}  {'outcome':<9}{'seeds':>5}"
        f"{'test accuracy':>20}{'test loss':>20}{'s/run':>8}"
    ]
    for r in rows:
        cells = [
            "-" if math.isnan(mean) else f"{mean:.4f} ± {sd:.4f}"
            for mean, sd in (r["test_accuracy"], r["test_loss"])
        ]
        seconds = "-" if math.isnan(r["train_seconds"]) else f"{r['train_seconds']:.1f}"
        lines.append(
            f"{r['trial']:>5}  {_params_text(r['params']):<{width}}  {r['outcome']:<9}"
            f"{r['seeds']:>5}{cells[0]:>20}{cells[1]:>20}{seconds:>8}"
        )
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete:
        best = study.best_trial
        metric = config.objective.metric
        lines.append(
            f"best: trial {best.number} {_params_text(best.params)} {metric} {best.value:.4f}"
        )
    return "\n".join(lines)
