"""Studies: Optuna drives a study file's configurations; every (configuration, seed) is one
training run, logged to MLflow.

A trial is one configuration; its seeds run inside it and its value is the mean objective
over them (with several objectives, the list of their means: a multi-objective study, whose
result is a Pareto front, `pareto_trials`). A grid study enqueues each point once, and workers
pop them from Optuna's queue, so a point is trained once however many workers share the
study. A search asks the sampler until `n_trials` trials have settled. Rerunning a study
resumes it: settled configurations are kept; a trial whose worker died or was stopped is
marked FAIL (its unfinished MLflow runs KILLED, all its runs tagged `harness.trial_failed`)
and its configuration runs again, reusing the seeds that had finished. Every reader counts
only the runs of the trials that settled a configuration (`settled_trials`), so a
configuration is never counted twice. With adaptive seeds (`seeds: {min, max, resolution}`),
a grid's configurations first run `min` seeds; then each further seed a round asks for
(`harness.seed_rounds`, replayed from the settled trials by every worker) is one more trial
of the configuration's params, with user attributes `extends` (the configuration's first
trial) and `round_seed`, whose run joins the configuration's parent run. `configurations`
groups a configuration's settled trials; every table reads the seeds of all of them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from harness import data, efficiency, interrupt, seed_rounds, stats
from harness.config import INT_KEYS, Choices, ConfigError, StudyConfig, comparable_dump
from harness.errors import StoreError
from harness.metrics import METRICS
from harness.stores import Stores, check_pair
from harness.tracking import (
    RunLogger,
    dataset_inputs,
    experiment_id,
    experiment_tags,
    finish_parent_run,
    git_commit,
    search_all_runs,
    source_tags,
    start_parent_run,
)
from harness.train import Event, StopRun, resolve_device, train

# A RUNNING trial of another host is dead when its heartbeat is older than this; on this host,
# when its process is gone. The heartbeat comes from a thread, so slow training is not death.
STALE_SECONDS = float(os.environ.get("HARNESS_STALE_SECONDS", "120"))
HEARTBEAT_SECONDS = float(os.environ.get("HARNESS_HEARTBEAT_SECONDS", "20"))
PRUNE_PROXY = {"test_loss": "test_loss"}  # accuracies are estimated on the test batch
OUTCOME = "outcome"  # trial user attribute: finished | pruned | diverged | interrupted | ...
FAILED_TAG = "harness.trial_failed"  # on the MLflow runs of a trial that did not settle
MUTABLE_STUDY_KEYS = ("description", "n_trials")  # may change in a study file between runs
MAX_DRAWS = 100  # a search gives up after this many draws in a row of configurations it had
EXTENDS = "extends"  # user attr of a seed-round trial: its configuration's first trial
ROUND_SEED = "round_seed"  # user attr of a seed-round trial: the one seed it trains
STOPPED_TAG = "harness.stopped"  # on a parent run, once the seed rounds are over: why
WILCOXON_P = 0.1  # a search with adaptive seeds stops a trial below this (Optuna's default)
STOPPED = "stopped"  # trial user attr of a search with adaptive seeds: why its seeds ended
WAIT_SECONDS = float(os.environ.get("HARNESS_WAIT_SECONDS", "2"))  # polling for other workers


class TrialTaken(Exception):  # noqa: N818 (a signal, not an error)
    """Another worker declared this one dead and failed its trial (after a long pause)."""


def _sampler(study: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    seed = study.sampler_seed if seed is None else seed
    if study.sampler == "tpe":  # Optuna's TPE is multi-objective (MOTPE) when the study is
        return optuna.samplers.TPESampler(n_startup_trials=min(10, study.n_trials or 10), seed=seed)
    if study.sampler == "nsga2":  # its generations live in the study, not in the sampler
        return optuna.samplers.NSGAIISampler(population_size=population_size(study), seed=seed)
    if study.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # a grid's points come from the queue


def population_size(study: StudyConfig) -> int:
    """NSGA-II's generation size: a third of the trials (at least 4, at most Optuna's default
    50), so a search of n_trials sees about three generations after the random first one."""
    return max(4, min(50, (study.n_trials or 150) // 3))


def _trial_seed(sampler_seed: int, number: int) -> int:
    """The sampler's seed for one trial: reproducible, and different for every trial, so
    workers and resumed processes do not all draw the same configurations."""
    return (sampler_seed * 1_000_003 + number) % 2**32


def _pruner(study: StudyConfig) -> optuna.pruners.BasePruner:
    if study.adaptive is not None and study.sampler != "grid":  # seeds are the instances
        return optuna.pruners.WilcoxonPruner(
            p_threshold=WILCOXON_P, n_startup_steps=study.adaptive.min
        )
    settings = study.pruner
    if settings.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_steps
        )
    if settings.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, settings.warmup_steps))
    return optuna.pruners.NopPruner()


def _changes(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two study configs, as `key old -> new` phrases."""
    changes = []
    for key in sorted(set(stored) | set(current), key=str):
        old, new = stored.get(key), current.get(key)
        if prefix == "" and key in MUTABLE_STUDY_KEYS or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _changes(old, new, f"{prefix}{key}.")
        else:
            shown = (
                json.dumps(side[key]) if key in side else "unset" for side in (stored, current)
            )
            changes.append(f"{prefix}{key} {' -> '.join(shown)}")
    return changes


def open_study(config: StudyConfig, stores: Stores) -> optuna.Study:
    """Create or load the Optuna study of a study file. A study is bound to the file it was
    created from: a rerun with other settings (base, space, seeds, sampler, objective, pruner)
    is refused, since its results would silently mix with the old ones. A study has one
    direction per objective, and its objectives' metric names (Optuna's dashboard, reports)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=config.name,
        storage=stores.optuna_storage(),
        directions=[objective.direction for objective in config.objectives],
        sampler=_sampler(config),
        pruner=_pruner(config),
        load_if_exists=True,
    )
    current = config.model_dump(mode="json")
    stored = study.user_attrs.get("config")
    if stored is not None:
        # One objective is stored as `objective: {...}`, several as `objectives: [...]`:
        # where the two sides differ in form, both are compared as lists.
        mixed = ("objective" in stored) != ("objective" in current)
        before, now = (
            (comparable_dump(stored), comparable_dump(current)) if mixed else (stored, current)
        )
        changed = _changes(before, now)
        if changed:
            raise ConfigError(
                f"study '{config.name}' in {stores.description} was run with another version "
                f"of its file ({'; '.join(changed)}): restore those settings, or give the "
                f"changed study a new name (its `name:` and file name) or another --output-dir"
            )
    if stored != current:
        study.set_user_attr("description", config.description)
        study.set_user_attr("config", current)
    if study.metric_names != config.metric_names:  # names the axes in optuna-dashboard
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.metric_names)
    return study


def grid_key(params: dict[str, Any]) -> str:
    """A grid point's identity, kept as the trial's user attribute `grid_point`."""
    return json.dumps(params, sort_keys=True)


def worker_host() -> str:
    """This machine's name as workers record it ($HARNESS_WORKER_HOST overrides it)."""
    return os.environ.get("HARNESS_WORKER_HOST") or socket.gethostname()


def _process_start(pid: int) -> str | None:
    """A process's start time (Linux clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(trial: optuna.trial.FrozenTrial) -> bool:
    """Is the worker of a RUNNING trial still there? On this host: its process exists (a
    paused process is alive); elsewhere: its heartbeat is recent."""
    attrs = trial.user_attrs
    if attrs.get("host") == worker_host() and "pid" in attrs:
        pid = int(attrs["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = attrs.get("pid_start")
        return started is None or _process_start(pid) in (None, started)
    beat = attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and time.time() - float(beat) < STALE_SECONDS


def _tag_failed(
    client: MlflowClient, run_ids: list[str], end_as: str | None, message: str = ""
) -> None:
    """Tag the runs of a trial that did not settle; end the unfinished ones `end_as`
    (KILLED: the worker died; FAILED: an error the worker could not record, a full disk)."""
    for run_id in run_ids:
        client.set_tag(run_id, FAILED_TAG, "true")
        if end_as and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "harness.status", end_as.lower())
            if message:
                client.set_tag(run_id, "harness.message", message[:5000])
            client.set_terminated(run_id, status=end_as)


def fail_stale_trials(study: optuna.Study, client: MlflowClient) -> list[int]:
    """Mark trials whose worker died FAIL, and end their MLflow runs that still run KILLED."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(trial):
            continue
        _tag_failed(client, _all_run_ids(trial.user_attrs), "KILLED")
        # Optuna has no public setter for another process's trial; its storage API is stable.
        study._storage.set_trial_user_attr(trial._trial_id, OUTCOME, "killed")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial.number)
    return failed


def _all_run_ids(attrs: dict[str, Any]) -> list[str]:
    """A trial's MLflow runs: its parent run (if any) and its seeds' runs."""
    parent = attrs.get("mlflow_parent_run_id")
    return ([parent] if parent else []) + list(attrs.get("mlflow_run_ids", []))


def kill_orphan_runs(study: optuna.Study, client: MlflowClient, experiment: str) -> int:
    """End KILLED the RUNNING runs whose trial is not running (a worker that died between
    creating a run and linking it to its trial leaves one); return how many."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    orphans = 0
    for run in search_all_runs(client, experiment, "attributes.status = 'RUNNING'"):
        trial = trials.get(int(run.data.tags.get("harness.trial", -1)))
        if trial is not None and trial.state == TrialState.RUNNING:
            continue
        attrs = trial.user_attrs if trial is not None else {}
        failed = attrs.get(OUTCOME) == "error"  # recorded in Optuna, but not in MLflow
        _tag_failed(
            client, [run.info.run_id], "FAILED" if failed else "KILLED", attrs.get("message", "")
        )
        orphans += 1
    return orphans


def settled(trial: optuna.trial.FrozenTrial) -> bool:
    """Has this trial settled its configuration (complete, pruned, or diverged: a result too)?"""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) == "diverged"


def settled_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials whose runs every reader counts: one per configuration that has a result."""
    return [t for t in study.get_trials(deepcopy=False) if settled(t)]


def settled_run_ids(study: optuna.Study) -> set[str]:
    """The MLflow runs of the settled trials (the runs a report or a table may count)."""
    return {i for t in settled_trials(study) for i in t.user_attrs.get("mlflow_run_ids", [])}


def _covered(trial: optuna.trial.FrozenTrial) -> bool:
    """Does this trial account for its grid point (done, being done, or queued)?"""
    return settled(trial) or trial.state in (TrialState.RUNNING, TrialState.WAITING)


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


def _skip(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """End a trial this worker will not run (not counted anywhere)."""
    trial.set_user_attr(OUTCOME, "skipped")
    trial.set_user_attr("message", why)
    study.tell(trial, state=TrialState.FAIL)


def _next_trial(
    study: optuna.Study, config: StudyConfig, client: MlflowClient | None = None
) -> optuna.Trial | None:
    """The next trial this worker should run, or None when the study needs nothing more."""
    if config.sampler == "grid":
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()
            if EXTENDS in trial.user_attrs:  # a seed round's trial, queued by any worker
                if _round_item_free(study, trial):
                    return trial
                _skip(study, trial, "another worker took this seed first")
                continue
            point = trial.user_attrs.get("grid_point")
            others = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.number != trial.number
                and t.user_attrs.get("grid_point") == point
                and (settled(t) or t.state == TrialState.RUNNING)
            ]
            if point is not None and not others:
                return trial
            _skip(study, trial, "another worker took this grid point first")
        return _next_round_trial(study, config, client) if config.adaptive else None
    for _ in range(MAX_DRAWS):
        if len(settled_trials(study)) >= (config.n_trials or 0):
            return None
        trial = study.ask()
        ahead = [
            t
            for t in study.get_trials(deepcopy=False)
            if settled(t) or (t.state == TrialState.RUNNING and t.number < trial.number)
        ]
        if len(ahead) >= (config.n_trials or 0):  # other workers hold the last trials
            _skip(study, trial, "n_trials reached by the trials of other workers")
            return None
        if config.sampler_seed is not None and config.sampler != "qmc":
            study.sampler = _sampler(config, _trial_seed(config.sampler_seed, trial.number))
        params = _suggest(trial, config)
        if not any(t.params == params for t in ahead if t.number != trial.number):
            return trial
        _skip(study, trial, "a configuration already tried")
    print(f"no new configuration in {MAX_DRAWS} draws: the space looks exhausted", flush=True)
    return None


def _round_item(trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    """(configuration, seed) of a seed-round trial, None for a configuration's first trial."""
    if EXTENDS not in trial.user_attrs:
        return None
    return grid_key(trial.params), int(trial.user_attrs[ROUND_SEED])


def _round_item_free(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Is no other trial training, or done with, this seed-round trial's seed (the lowest
    trial number wins a race between workers)?"""
    item = (grid_key(trial.params), int(trial.user_attrs[ROUND_SEED]))
    return not any(
        _round_item(t) == item
        and (settled(t) or (t.state == TrialState.RUNNING and t.number < trial.number))
        for t in study.get_trials(deepcopy=False)
        if t.number != trial.number
    )


def configurations(
    study: optuna.Study, config: StudyConfig
) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """The settled trials of each configuration (by `grid_key` of its params): its first
    trial, then its seed-round trials in order."""
    grouped: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in sorted(settled_trials(study), key=lambda t: (EXTENDS in t.user_attrs, t.number)):
        grouped.setdefault(grid_key(trial.params), []).append(trial)
    return grouped


def configuration_runs(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    """The runs of a configuration's settled trials, in seed order."""
    runs = [run for trial in trials for run in trial.user_attrs.get("runs", [])]
    return sorted(runs, key=lambda run: int(run["seed"]))


def round_plan(study: optuna.Study, config: StudyConfig) -> seed_rounds.Plan | None:
    """Where an adaptive study's seed rounds stand, from the settled trials (None for a study
    with a fixed set of seeds). Configurations whose first trial did not finish (pruned,
    diverged) and those with a seed that did not finish leave the race."""
    if config.adaptive is None or config.sampler != "grid":
        return None
    metric = config.objective.metric
    values: dict[str, dict[int, float]] = {}
    for label, trials in configurations(study, config).items():
        runs = configuration_runs(trials)
        if trials[0].state != TrialState.COMPLETE or any(
            r.get("status") != "finished" for r in runs
        ):
            continue
        values[label] = {int(r["seed"]): float(r[metric]) for r in runs if metric in r}
    return seed_rounds.plan(values, config.adaptive, config.objective.direction)


def _next_round_trial(
    study: optuna.Study, config: StudyConfig, client: MlflowClient | None
) -> optuna.Trial | None:
    """The next seed of the seed rounds for this worker: queued and taken as a trial of its
    configuration's params. Waits while other workers train what the next round depends on
    (a trial of a dead worker is failed and its work queued again); None when the rounds are
    over."""
    while True:
        interrupt.check()
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return _next_trial(study, config, client)
        if client is not None and fail_stale_trials(study, client):
            enqueue_grid(study, config)
            continue
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(_round_item(t) is None for t in running):  # a first trial: rounds need it
            time.sleep(WAIT_SECONDS)
            continue
        plan = round_plan(study, config)
        if plan is None or plan.done:
            return None
        taken = {item for t in running if (item := _round_item(t))}
        free = [
            (label, seed)
            for label, missing in plan.pending.items()
            for seed in missing
            if (label, seed) not in taken
        ]
        if not free:  # every seed of this round is being trained by another worker
            time.sleep(WAIT_SECONDS)
            continue
        label, seed = free[0]
        first = configurations(study, config)[label][0]
        study.enqueue_trial(first.params, user_attrs={EXTENDS: first.number, ROUND_SEED: seed})


def tag_stopped(study: optuna.Study, config: StudyConfig, client: MlflowClient) -> None:
    """Once the seed rounds are over, tell each configuration's parent run how many seeds it
    got and why it stopped (idempotent: every worker that sees the end may write it)."""
    plan = round_plan(study, config)
    if plan is None or not plan.done:
        return
    for label, trials in configurations(study, config).items():
        parent = trials[0].user_attrs.get("mlflow_parent_run_id")
        reason = plan.stopped.get(label)
        if parent is not None and reason is not None:
            client.set_tag(parent, STOPPED_TAG, reason)
            client.set_tag(parent, "harness.seeds", str(plan.targets[label]))


class _Heartbeat:
    """Keeps a trial's heartbeat fresh from a thread, whatever training is doing, and notices
    when another worker has failed the trial (it took this worker for dead after a pause)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        self.study, self.trial = study, trial
        self.taken = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            try:
                running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if self.trial.number not in {t.number for t in running}:
                    self.taken.set()
                    return
                self.trial.set_user_attr("heartbeat", time.time())
            except UpdateFinishedTrialError:
                self.taken.set()
                return
            except Exception:  # noqa: BLE001 (a store hiccup: the next beat tries again)
                continue

    def check(self) -> None:
        """For the training loop: raise StopRun on a stop signal or a trial taken away."""
        signum = interrupt.received()
        if signum is not None:
            raise StopRun("interrupted", f"stopped by {signal.Signals(signum).name}")
        if self.taken.is_set():
            raise StopRun("taken", "another worker took this trial (this one seemed dead)")


class _TrialReporter:
    """Training callback: reports for pruning."""

    def __init__(self, trial: optuna.Trial, config: StudyConfig, offset: int):
        self.trial, self.offset = trial, offset
        self.interval = config.pruner.interval
        self.proxy = PRUNE_PROXY.get(config.objective.metric, "test_batch_accuracy")

    def __call__(self, event: Event) -> None:
        if event.kind != "eval" or event.iteration % self.interval:
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


def _finished_seeds(study: optuna.Study, params: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Finished runs of failed trials of the same configuration, by seed: a rerun reuses them
    instead of training them again (same configuration and seed give the same run)."""
    found: dict[int, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.params == params and not settled(trial):
            for run in trial.user_attrs.get("runs", []):
                if run.get("status") == "finished":
                    found[int(run["seed"])] = {**run, "reused_from": trial.number}
    return found


def _adopt(
    client: MlflowClient, run: dict[str, Any], trial: optuna.Trial, name: str, parent: str
) -> None:
    """Make a finished run of a failed trial a run (a child) of `trial`."""
    run_id = run["run_id"]
    client.set_tag(run_id, "harness.trial", str(trial.number))
    client.set_tag(run_id, "optuna.trial_number", str(trial.number))
    client.set_tag(run_id, "mlflow.parentRunId", parent)
    if FAILED_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, FAILED_TAG)
    client.update_run(run_id, name=f"{name}/t{trial.number:03d}/s{run['seed']}")


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    config: StudyConfig,
    client: MlflowClient,
    experiment: str,
    load_dataset: Callable[[str], data.Dataset],
    progress: bool,
) -> None:
    """Train every seed of one configuration, log each run, and tell Optuna the outcome.

    `load_dataset` gives a data set by name (loaded once per study, when first needed).
    A stop signal ends the current run KILLED and the trial FAIL, then raises `Interrupted`;
    any other error ends them FAILED and FAIL and propagates. A trial another worker took
    over (this one was paused too long) is left to that worker.
    """
    trial.set_user_attr("host", worker_host())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("pid_start", _process_start(os.getpid()))
    trial.set_user_attr("heartbeat", time.time())
    params = _suggest(trial, config)
    reusable = _finished_seeds(study, params)
    runs: list[dict[str, Any]] = []
    run_ids: list[str] = []
    logger: RunLogger | None = None
    parent: str | None = None
    commit = git_commit()
    first_trial = None  # of the configuration, for a trial of the seed rounds
    shared: str | None = None  # then its parent run, which that first trial owns
    seeds = config.seed_list
    wilcoxon = config.adaptive is not None and config.sampler != "grid"
    if wilcoxon:  # seeds up to max, until Optuna's WilcoxonPruner finds it worse than the best
        seeds = config.all_seeds
    if EXTENDS in trial.user_attrs:
        first_trial = study.trials[int(trial.user_attrs[EXTENDS])]
        seeds = [int(trial.user_attrs[ROUND_SEED])]
    first = config.run_config(params, seeds[0])
    try:
        dataset = load_dataset(first.dataset)  # the seeds of one configuration share it
        tags = {
            **source_tags(commit, f"harness study {config.name}"),
            "harness.study": config.name,
            "harness.trial": trial.number,
            "harness.backend": first.backend,
            "harness.device": str(resolve_device(first.device)),
            "harness.commit": commit,
            "harness.data_checksum": dataset.checksum,
            "harness.dataset": dataset.name,
            "harness.host": worker_host(),
            "harness.pid": os.getpid(),
            "optuna.study": study.study_name,
            "optuna.trial_number": trial.number,
        }
        if first_trial is None:
            parent = start_parent_run(
                client,
                experiment,
                f"{config.name}/t{trial.number:03d} {_params_text(params)}",
                tags,
                {k: v for k, v in first.model_dump().items() if k != "seed"},
                _inputs(_subset(dataset, first)),
            )
            trial.set_user_attr("mlflow_parent_run_id", parent)
        else:  # the seed joins its configuration's parent run (another trial's)
            shared = first_trial.user_attrs["mlflow_parent_run_id"]
        with _Heartbeat(study, trial) as heartbeat:
            for index, seed in enumerate(seeds):
                interrupt.check()
                if heartbeat.taken.is_set():
                    raise TrialTaken
                if seed in reusable:
                    _adopt(client, reusable[seed], trial, config.name, parent or shared)
                    if wilcoxon:
                        trial.report(reusable[seed][config.objective.metric], step=seed)
                    runs.append(reusable[seed])
                    run_ids.append(reusable[seed]["run_id"])
                    trial.set_user_attr("mlflow_run_ids", run_ids)
                    trial.set_user_attr("runs", runs)
                    continue
                run_config = config.run_config(params, seed)
                split = _subset(dataset, run_config)
                logger = RunLogger(
                    client,
                    experiment,
                    f"{config.name}/t{trial.number:03d}/s{seed}",
                    {**tags, "harness.seed": seed},
                    parent_run_id=parent or shared,
                )
                run_ids.append(logger.run_id)
                trial.set_user_attr("mlflow_run_ids", run_ids)
                logger.log_config(run_config.model_dump(), _inputs(split))
                callbacks: list[Any] = [logger]
                if config.pruner.type != "none":
                    per_run = run_config.epochs * (len(split.train) // run_config.batch_size)
                    callbacks.append(_TrialReporter(trial, config, index * per_run))
                result = train(
                    run_config, split, callbacks, progress=progress, stop_check=heartbeat.check
                )
                logger.finish(result)
                logger = None
                if result.status == "interrupted":
                    interrupt.check()
                if result.status == "taken":
                    raise TrialTaken
                runs.append(
                    {"seed": seed, "run_id": run_ids[-1], "status": result.status} | result.metrics
                )
                trial.set_user_attr("runs", runs)
                if wilcoxon and result.status == "finished":
                    trial.report(result.metrics[config.objective.metric], step=seed)
                    if trial.should_prune():
                        trial.set_user_attr(STOPPED, "pruned")
                        break
                if result.status != "finished":
                    trial.set_user_attr(OUTCOME, result.status)
                    trial.set_user_attr("message", result.message)
                    state = TrialState.PRUNED if result.status == "pruned" else TrialState.FAIL
                    if parent is not None:
                        finish_parent_run(client, parent, runs, result.status, result.message)
                    else:
                        _update_shared_parent(study, config, client, shared, trial, runs)
                    study.tell(trial, state=state)
                    return
            trial.set_user_attr(OUTCOME, "finished")
            if wilcoxon and len(runs) == len(seeds):
                trial.set_user_attr(STOPPED, "max")
            if parent is not None:
                finish_parent_run(client, parent, runs, "finished")
            else:
                _update_shared_parent(study, config, client, shared, trial, runs)
            values = [statistics.fmean(run[name] for run in runs) for name in config.metric_names]
            study.tell(trial, values if config.multi_objective else values[0])
    except (TrialTaken, UpdateFinishedTrialError):
        if logger is not None:
            _best_effort(logger.abort, "KILLED", "another worker took this trial")
        if parent is not None:
            _best_effort(_tag_failed, client, [parent], "KILLED", "another worker took it")
        print(f"trial {trial.number}: another worker took it over; going on", flush=True)
    except BaseException as err:
        stopped = isinstance(err, interrupt.Interrupted | KeyboardInterrupt)
        message = str(err) if stopped else repr(err)
        if logger is not None:
            _best_effort(logger.abort, "KILLED" if stopped else "FAILED", message)
        _best_effort(_tag_failed, client, run_ids, None)
        if parent is not None:
            _best_effort(_tag_failed, client, [parent], "KILLED" if stopped else "FAILED", message)
        _best_effort(trial.set_user_attr, OUTCOME, "interrupted" if stopped else "error")
        _best_effort(trial.set_user_attr, "message", message[:1000])
        _best_effort(study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _update_shared_parent(
    study: optuna.Study,
    config: StudyConfig,
    client: MlflowClient,
    parent: str,
    trial: optuna.Trial,
    runs: list[dict[str, Any]],
) -> None:
    """A seed round's runs join their configuration's parent run: its means and sds over
    every finished seed of the configuration, this trial's included."""
    earlier = configurations(study, config).get(grid_key(trial.params), [])
    finish_parent_run(client, parent, configuration_runs(earlier) + runs, "finished")


def _inputs(split: data.Dataset) -> list[Any]:
    """The MLflow dataset inputs of a run: the train and test images it used."""
    rows = {"train": len(split.train), "test": len(split.test)}
    return dataset_inputs(split.name, split.checksum, rows)


def _best_effort(action: Any, *args: Any, **kwargs: Any) -> None:
    """Record a failure in the stores if they still take writes (a full disk may refuse);
    the next start reconciles what could not be written."""
    try:
        action(*args, **kwargs)
    except Exception:  # noqa: BLE001 (the original error is the one to report)
        pass


def _subset(dataset: data.Dataset, config) -> data.Dataset:
    train_split = data.subset(
        dataset.train, config.train_subset, config.subset_sampling, config.seed
    )
    test_split = data.subset(dataset.test, config.test_subset, config.subset_sampling, config.seed)
    return data.Dataset(train_split, test_split, dataset.checksum, dataset.name)


def prepare_study(config: StudyConfig, stores: Stores) -> tuple[MlflowClient, str, optuna.Study]:
    """Create or load the experiment and the study, fail trials whose worker died, and
    queue the grid points nobody covers; under the set-up lock of the embedded stores."""
    with stores.setup_lock():
        study = open_study(config, stores)  # first: a changed study file writes nothing
        stores.create_tracking_tables()
        client = stores.client()
        check_pair(study, client, config.name, stores)  # a lost store: say so, write nothing
        tags = experiment_tags(
            config.description, config.objective.metric, config.objective.direction
        )
        experiment = experiment_id(client, config.name, stores.artifact_root, tags)
        stale = fail_stale_trials(study, client)
        orphans = kill_orphan_runs(study, client, experiment)
        if config.sampler == "grid":
            enqueue_grid(study, config)
    if stale:
        print(f"trials {stale} had lost their worker: marked FAIL, their runs KILLED", flush=True)
    if orphans:
        print(f"{orphans} MLflow run(s) had lost their worker: ended", flush=True)
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
    loaded: dict[str, data.Dataset] = {}

    def load_dataset(name: str) -> data.Dataset:
        """Each data set loaded once, when a run first needs it."""
        if name not in loaded:
            loaded[name] = data.load(data_dir, device, dataset=name)
        return loaded[name]

    if "dataset" not in config.space:  # one data set: load it (and fail) before any trial
        load_dataset(config.base_config.dataset)
    interrupt.check()
    client, experiment, study = prepare_study(config, stores)
    done = 0
    while max_trials is None or done < max_trials:
        interrupt.check()
        trial = _next_trial(study, config, client)
        if trial is None:
            break
        start = time.perf_counter()
        try:
            run_trial(study, trial, config, client, experiment, load_dataset, progress)
        except StoreError as err:  # a store unreachable for too long (harness.retry)
            message = f"trial {trial.number} failed, the next worker reruns it: {err}"
            raise StoreError(message) from err
        done += 1
        frozen = study.trials[trial.number]
        print(_trial_line(config, frozen, time.perf_counter() - start), flush=True)
    interrupt.check()
    if config.adaptive is not None and (max_trials is None or done < max_trials):
        tag_stopped(study, config, client)
    return study


def _trial_line(config: StudyConfig, trial: optuna.trial.FrozenTrial, seconds: float) -> str:
    outcome = trial.user_attrs.get(OUTCOME, trial.state.name.lower())
    head = f"trial {trial.number:3d} {_params_text(trial.params)}"
    if EXTENDS in trial.user_attrs:
        head += f" seed {trial.user_attrs[ROUND_SEED]} (seed round)"
    if trial.state == TrialState.COMPLETE and config.multi_objective:
        return f"{head}: {_values_text(config, trial.values)} ({seconds:.1f} s)"
    if trial.state == TrialState.COMPLETE:
        return f"{head}: {config.objective.metric} {trial.value:.4f} ({seconds:.1f} s)"
    return f"{head}: {outcome} {trial.user_attrs.get('message', '')} ({seconds:.1f} s)"


def _values_text(config: StudyConfig, values: list[float]) -> str:
    """`metric value, metric value`: a trial's objective values, each with its metric's digits."""
    return ", ".join(
        f"{name} {value:.{METRICS[name].digits}f}"
        for name, value in zip(config.metric_names, values, strict=True)
    )


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials no other complete trial beats in every objective (Optuna's
    `best_trials`: the Pareto front; for one objective, the best trial and its ties), in
    trial order."""
    return sorted(study.best_trials, key=lambda t: t.number)


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
        if "reused_from" not in run
    ]
    return len(runs), sum(run["train_seconds"] for run in runs)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(study: optuna.Study, config: StudyConfig) -> list[dict[str, Any]]:
    """One row per settled configuration (its first trial's number, params and outcome, the
    statistics over all its seeds, seed rounds included) and, with one objective, the
    configuration against the best in it (`stats.vs_best`: paired where seeds match)."""
    plan = round_plan(study, config)
    rows = []
    for label, trials in configurations(study, config).items():
        first = trials[0]
        runs = [r for r in configuration_runs(trials) if "test_accuracy" in r]
        finished = [r for r in runs if r.get("status", "finished") == "finished"]
        metric = config.objective.metric
        rows.append(
            {
                "trial": first.number,
                "label": label,
                "params": first.params,
                "outcome": first.user_attrs.get(OUTCOME, first.state.name.lower()),
                "seeds": len(runs),
                "stopped": plan.stopped.get(label, "")
                if plan
                else first.user_attrs.get(STOPPED, ""),
                "by_seed": {int(r["seed"]): float(r[metric]) for r in finished if metric in r},
                "test_accuracy": _mean_sd([r["test_accuracy"] for r in runs]),
                "test_loss": _mean_sd([r["test_loss"] for r in runs]),
                "train_seconds": _mean_sd([r["train_seconds"] for r in runs])[0],
                "efficiency": {  # means (runs logged before these metrics lack them)
                    name: _mean_sd([r[name] for r in runs if name in r])[0]
                    for name in efficiency.WORKLOAD_METRICS + efficiency.STATIC_METRICS
                },
            }
        )
    _add_vs_best(rows, config)
    return rows


def _add_vs_best(rows: list[dict[str, Any]], config: StudyConfig) -> None:
    """Each row's `vs_best` (stats.vs_best's columns) and `best` flag, in the objective."""
    scored = {r["label"]: r["by_seed"] for r in rows if r["by_seed"]}
    if config.multi_objective or not scored:
        return
    sign = 1 if config.objective.direction == "maximize" else -1
    best = max(scored, key=lambda label: sign * statistics.fmean(scored[label].values()))
    versus = stats.vs_best(scored, best, config.objective.direction)
    for row in rows:
        row["best"] = row["label"] == best
        row["vs_best"] = versus.get(row["label"])


def _mark_pareto(
    lines: list[str], rows: list[dict[str, Any]], study: optuna.Study, config: StudyConfig
) -> list[str]:
    """The table's lines (a header, then one per row) with a `*` column before the rows of
    the Pareto-optimal configurations, and the front listed below with its objective values."""
    front = pareto_trials(study)
    numbers = {t.number for t in front}
    marked = [f"  {lines[0]}"] + [
        f"{'*' if row['trial'] in numbers else ' '} {line}"
        for row, line in zip(rows, lines[1 : 1 + len(rows)], strict=True)
    ]
    goals = ", ".join(f"{o.metric} {o.direction[:3]}" for o in config.objectives)
    marked.append(f"* Pareto-optimal ({goals}): {len(front)} of {len(rows)} configurations")
    first = config.objective
    front.sort(key=lambda t: t.values[0], reverse=first.direction == "maximize")
    marked += [
        f"  trial {t.number} {_params_text(t.params)}: {_values_text(config, t.values)}"
        for t in front
    ]
    return marked + lines[1 + len(rows) :]


def running_trials(study: optuna.Study) -> list[int]:
    """Trials still running (in other workers, once this one is done)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def format_table(study: optuna.Study, config: StudyConfig, partial: bool = False) -> str:
    """The end-of-study table: configuration, seeds (and why they stopped, with adaptive
    seeds), mean and sd over seeds, time, and each configuration against the best (the
    difference, Holm-adjusted p and verdict of a paired test where the seeds match).
    `partial`: other workers still run configurations, so the best is the best so far."""
    rows = summary_rows(study, config)
    if not rows:
        return "no finished configurations yet"
    width = max(len(_params_text(r["params"])) for r in rows)
    extra, extras = efficiency.table_columns([r["efficiency"] for r in rows])  # where they vary
    adaptive = config.adaptive is not None
    versus = any(r.get("vs_best") for r in rows) and max(len(r["by_seed"]) for r in rows) > 1
    lines = [
        f"{'trial':>5}  {'configuration':<{width}}  {'outcome':<9}{'seeds':>5}"
        + (f"  {'stopped':<10}" if adaptive else "")
        + f"{'test accuracy':>20}{'test loss':>20}{'s/run':>8}"
        + (f"{'vs best':>10}{'p (Holm)':>10}" if versus else "")
        + extra
        + ("  verdict" if versus else "")
    ]
    for r, more in zip(rows, extras, strict=True):
        cells = [
            "-" if math.isnan(mean) else f"{mean:.4f} ± {sd:.4f}"
            for mean, sd in (r["test_accuracy"], r["test_loss"])
        ]
        seconds = "-" if math.isnan(r["train_seconds"]) else f"{r['train_seconds']:.1f}"
        line = (
            f"{r['trial']:>5}  {_params_text(r['params']):<{width}}  {r['outcome']:<9}"
            f"{r['seeds']:>5}" + (f"  {r['stopped'] or '-':<10}" if adaptive else "")
        )
        line += f"{cells[0]:>20}{cells[1]:>20}{seconds:>8}"
        if versus:
            v = r.get("vs_best") or {}
            difference, p = v.get("diff_vs_best", math.nan), v.get("p_holm", math.nan)
            line += f"{'-' if math.isnan(difference) else f'{difference:+.4f}':>10}"
            line += f"{'-' if math.isnan(p) else f'{p:.3f}':>10}"
        line += more + (f"  {(r.get('vs_best') or {}).get('verdict', '-')}" if versus else "")
        lines.append(line)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete and config.multi_objective:  # a front, not one best: marked, then listed
        return "\n".join(_mark_pareto(lines, rows, study, config))
    best = [r for r in rows if r.get("best")]
    if best:
        row, metric = best[0], config.objective.metric
        mean = statistics.fmean(row["by_seed"].values())
        lines.append(
            f"{'best so far' if partial else 'best'}: trial {row['trial']} "
            f"{_params_text(row['params'])} {metric} {mean:.4f} "
            f"(mean of {len(row['by_seed'])} seeds)"
        )
        lines += _versus_notes(rows, config)
    return "\n".join(lines)


def _versus_notes(rows: list[dict[str, Any]], config: StudyConfig) -> list[str]:
    """How to read the table's "vs best" columns: the tests, the family size, the power."""
    others = [r["vs_best"] for r in rows if r.get("vs_best") and not r.get("best")]
    if not others:
        return []
    tests = sorted({v["test"] for v in others})
    lines = [
        f"vs best: {config.objective.metric} minus the best's, "
        + "; ".join(stats.TESTS[t] for t in tests)
        + f"; p Holm-adjusted over {len(others)} comparisons, verdicts at alpha {stats.ALPHA}; "
        f"'no difference > x': x is the smallest difference the test had "
        f"{stats.POWER:.0%} power to detect"
    ]
    pairs = [v["pairs"] for v in others if v["test"] == "paired"]
    warning = stats.small_n_warning(min(pairs)) if pairs else None
    if warning:
        lines.append(f"note: {warning}")
    if config.adaptive is not None and config.sampler == "grid":
        lines.append("stopped: " + "; ".join(f"{k}: {v}" for k, v in seed_rounds.REASONS.items()))
    if config.adaptive is not None:
        ran, fixed = sum(r["seeds"] for r in rows), len(rows) * config.adaptive.max
        lines.append(
            f"adaptive seeds: {ran} runs, against {fixed} with {config.adaptive.max} seeds for "
            f"every configuration ({fixed - ran} saved)"
        )
    return lines
