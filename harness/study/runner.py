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
(`harness.study.seed_rounds`, replayed from the settled trials by every worker) is one more trial
of the configuration's params, with user attributes `extends` (the configuration's first
trial) and `round_seed`, whose run joins the configuration's parent run. `configurations`
groups a configuration's settled trials; every table reads the seeds of all of them.
"""

from __future__ import annotations

import json
import os
import signal
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

from harness import interrupt
from harness.config import MUTABLE_STUDY_KEYS, StudyConfig, comparable_dump
from harness.data import loading
from harness.errors import ConfigError, StoreError
from harness.stores.opening import Stores, check_pair
from harness.study.liveness import (
    fail_stale_trials,
    kill_orphan_runs,
    process_start,
    tag_failed,
    worker_host,
)
from harness.study.samplers import make_pruner, make_sampler
from harness.study.scheduling import enqueue_grid, next_trial, suggest
from harness.study.settled import (
    EXTENDS,
    OUTCOME,
    ROUND_SEED,
    STOPPED,
    configuration_runs,
    configurations,
    counted_trials,
    grid_key,
    round_item,
    round_plan,
    settled,
    settled_trials,
)
from harness.study.table import params_text, values_text
from harness.study.tags import (
    BACKEND_TAG,
    COMMIT_TAG,
    DATA_CHECKSUM_TAG,
    DATASET_TAG,
    DEVICE_TAG,
    DUPLICATE_TAG,
    FAILED_TAG,
    HOST_TAG,
    PID_TAG,
    SEED_TAG,
    SEEDS_TAG,
    STOPPED_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)
from harness.study.tracking import (
    RunLogger,
    dataset_inputs,
    experiment_id,
    experiment_tags,
    finish_parent_run,
    git_commit,
    source_tags,
    start_parent_run,
)
from harness.training.loop import Event, StopRun, resolve_device, train

HEARTBEAT_SECONDS = float(os.environ.get("HARNESS_HEARTBEAT_SECONDS", "20"))
PRUNE_PROXY = {"test_loss": "test_loss"}  # accuracies are estimated on the test batch


class TrialTaken(Exception):  # noqa: N818 (a signal, not an error)
    """Another worker declared this one dead and failed its trial (after a long pause)."""


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
        sampler=make_sampler(config),
        pruner=make_pruner(config),
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


def tag_stopped(study: optuna.Study, config: StudyConfig, client: MlflowClient) -> None:
    """Once the seed rounds are over, tell each configuration's parent run how many seeds it
    got and why it stopped (idempotent: every worker that sees the end may write it)."""
    plan = round_plan(study, config)
    if plan is None or not plan.done:
        return
    repeated = _mark_duplicates(study, client)
    for label, trials in configurations(study, config).items():
        parent = trials[0].user_attrs.get("mlflow_parent_run_id")
        reason = plan.stopped.get(label)
        if parent is not None and reason is not None:
            client.set_tag(parent, STOPPED_TAG, reason)
            client.set_tag(parent, SEEDS_TAG, str(plan.targets[label]))
            if label in repeated:  # its summary counted a seed twice: write it again
                finish_parent_run(client, parent, configuration_runs(trials), "finished")


def _mark_duplicates(study: optuna.Study, client: MlflowClient) -> set[str]:
    """Tag the runs of seed-round trials that repeat a seed (`counted_trials` leaves them
    out) with the run that counts instead; return their configurations."""
    counted = counted_trials(study)
    kept = {t.number for t in counted}
    run_of = {
        (grid_key(t.params), int(run["seed"])): run["run_id"]
        for t in counted
        for run in t.user_attrs.get("runs", [])
    }
    repeated = set()
    for trial in settled_trials(study):
        if trial.number in kept:
            continue
        label, _ = round_item(trial)
        repeated.add(label)
        for run in trial.user_attrs.get("runs", []):
            counts = run_of.get((label, int(run["seed"])))
            if counts is not None:
                client.set_tag(run["run_id"], DUPLICATE_TAG, counts)
    return repeated


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


def parent_run_name(number: int, params: dict[str, Any]) -> str:
    """A configuration's MLflow run: "t003 beta=0.9" (the experiment names the study; short,
    so that MLflow's runs table does not cut what tells runs apart)."""
    return f"t{number:03d} {params_text(params)}"


def seed_run_name(params: dict[str, Any], seed: int) -> str:
    """A seed's MLflow run, shown under its configuration's: "beta=0.9 seed 1"."""
    return f"{params_text(params)} seed {seed}"


def _adopt(client: MlflowClient, run: dict[str, Any], trial: optuna.Trial, parent: str) -> None:
    """Make a finished run of a failed trial a run (a child) of `trial`."""
    run_id = run["run_id"]
    client.set_tag(run_id, TRIAL_TAG, str(trial.number))
    client.set_tag(run_id, "optuna.trial_number", str(trial.number))
    client.set_tag(run_id, "mlflow.parentRunId", parent)
    if FAILED_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, FAILED_TAG)
    client.update_run(run_id, name=seed_run_name(trial.params, int(run["seed"])))


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    config: StudyConfig,
    client: MlflowClient,
    experiment: str,
    load_dataset: Callable[[str], loading.Dataset],
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
    trial.set_user_attr("pid_start", process_start(os.getpid()))
    trial.set_user_attr("heartbeat", time.time())
    params = suggest(trial, config)
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
            STUDY_TAG: config.name,
            TRIAL_TAG: trial.number,
            BACKEND_TAG: first.backend,
            DEVICE_TAG: str(resolve_device(first.device)),
            COMMIT_TAG: commit,
            DATA_CHECKSUM_TAG: dataset.checksum,
            DATASET_TAG: dataset.name,
            HOST_TAG: worker_host(),
            PID_TAG: os.getpid(),
            "optuna.study": study.study_name,
            "optuna.trial_number": trial.number,
        }
        if first_trial is None:
            parent = start_parent_run(
                client,
                experiment,
                parent_run_name(trial.number, params),
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
                    _adopt(client, reusable[seed], trial, parent or shared)
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
                    seed_run_name(params, seed),
                    {**tags, SEED_TAG: seed},
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
                if len(seeds) > 1:  # a line a run: minutes of silence tell nothing
                    print(_seed_line(config, params, seed, result), flush=True)
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
            _best_effort(tag_failed, client, [parent], "KILLED", "another worker took it")
        print(f"trial {trial.number}: another worker took it over; going on", flush=True)
    except BaseException as err:
        stopped = isinstance(err, interrupt.Interrupted | KeyboardInterrupt)
        message = str(err) if stopped else repr(err)
        if logger is not None:
            _best_effort(logger.abort, "KILLED" if stopped else "FAILED", message)
        _best_effort(tag_failed, client, run_ids, None)
        if parent is not None:
            _best_effort(tag_failed, client, [parent], "KILLED" if stopped else "FAILED", message)
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


def _inputs(split: loading.Dataset) -> list[Any]:
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


def _subset(dataset: loading.Dataset, config) -> loading.Dataset:
    train_split = loading.subset(
        dataset.train, config.train_subset, config.subset_sampling, config.seed
    )
    test_split = loading.subset(
        dataset.test, config.test_subset, config.subset_sampling, config.seed
    )
    return loading.Dataset(train_split, test_split, dataset.checksum, dataset.name)


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
    loaded: dict[str, loading.Dataset] = {}

    def load_dataset(name: str) -> loading.Dataset:
        """Each data set loaded once, when a run first needs it."""
        if name not in loaded:
            loaded[name] = loading.load(data_dir, device, dataset=name)
        return loaded[name]

    if "dataset" not in config.space:  # one data set: load it (and fail) before any trial
        load_dataset(config.base_config.dataset)
    interrupt.check()
    client, experiment, study = prepare_study(config, stores)
    done = 0
    while max_trials is None or done < max_trials:
        interrupt.check()
        trial = next_trial(study, config, client)
        if trial is None:
            break
        start = time.perf_counter()
        try:
            run_trial(study, trial, config, client, experiment, load_dataset, progress)
        except StoreError as err:  # a store unreachable for too long (harness.stores.retry)
            message = f"trial {trial.number} failed, the next worker reruns it: {err}"
            raise StoreError(message) from err
        done += 1
        frozen = study.trials[trial.number]
        print(_trial_line(config, frozen, time.perf_counter() - start), flush=True)
    interrupt.check()
    if config.adaptive is not None and (max_trials is None or done < max_trials):
        tag_stopped(study, config, client)
    return study


def _seed_line(config: StudyConfig, params: dict[str, Any], seed: int, result: Any) -> str:
    """One seed's run as it ends, named as its MLflow run:
    "  beta=0.9 seed 1: test_accuracy 0.9402 (train 61.3 s)"."""
    head = f"  {seed_run_name(params, seed)}"
    seconds = result.metrics.get("train_seconds", float("nan"))
    if result.status != "finished":
        return f"{head}: {result.status} {result.message} (train {seconds:.1f} s)"
    values = " ".join(f"{name} {result.metrics[name]:.4f}" for name in config.metric_names)
    return f"{head}: {values} (train {seconds:.1f} s)"


def _trial_line(config: StudyConfig, trial: optuna.trial.FrozenTrial, seconds: float) -> str:
    outcome = trial.user_attrs.get(OUTCOME, trial.state.name.lower())
    head = f"trial {trial.number:3d} {params_text(trial.params)}"
    if EXTENDS in trial.user_attrs:
        head += f" seed {trial.user_attrs[ROUND_SEED]} (seed round)"
    if trial.state == TrialState.COMPLETE and config.multi_objective:
        return f"{head}: {values_text(config, trial.values)} ({seconds:.1f} s)"
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
        if "reused_from" not in run
    ]
    return len(runs), sum(run["train_seconds"] for run in runs)
