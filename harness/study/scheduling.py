"""What a worker trains next: the grid's queue, a search's draws, and the next seed round
of an adaptive grid."""

from __future__ import annotations

import datetime
import time
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import interrupt
from harness.config import INT_KEYS, Choices, StudyConfig
from harness.study.liveness import WAIT_SECONDS, fail_stale_trials
from harness.study.samplers import make_sampler
from harness.study.settled import (
    EXTENDS,
    OUTCOME,
    ROUND_CONFIGURATION,
    ROUND_SEED,
    configurations,
    covers_its_point,
    grid_key,
    round_item,
    round_plan,
    settled,
    settled_trials,
)

MAX_DRAWS = 100  # a search gives up after this many draws in a row of configurations it had


def _trial_seed(sampler_seed: int, number: int) -> int:
    """The sampler's seed for one trial: reproducible, and different for every trial, so
    workers and resumed processes do not all draw the same configurations."""
    return (sampler_seed * 1_000_003 + number) % 2**32


def enqueue_grid(study: optuna.Study, config: StudyConfig) -> int:
    """Queue every grid point that no trial covers yet; return how many were queued."""
    covered = {
        t.user_attrs.get("grid_point")
        for t in study.get_trials(deepcopy=False)
        if covers_its_point(t)
    }
    todo = [point for point in config.grid() if grid_key(point) not in covered]
    for point in todo:
        study.enqueue_trial(point, user_attrs={"grid_point": grid_key(point)})
    return len(todo)


def suggest(trial: optuna.Trial, config: StudyConfig) -> dict[str, Any]:
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


def next_trial(
    study: optuna.Study, config: StudyConfig, client: MlflowClient | None = None
) -> optuna.Trial | None:
    """The next trial this worker should run, or None when the study needs nothing more."""
    if config.sampler == "grid":
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()
            if EXTENDS in trial.user_attrs:  # a seed round's trial, queued by any worker
                if round_item_free(study, trial):
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
        return next_round_trial(study, config, client) if config.adaptive else None
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
            study.sampler = make_sampler(config, _trial_seed(config.sampler_seed, trial.number))
        params = suggest(trial, config)
        if not any(t.params == params for t in _drawn_before(study, trial)):
            return trial
        _skip(study, trial, "a configuration already tried")
    print(f"no new configuration in {MAX_DRAWS} draws: the space looks exhausted", flush=True)
    return None


SUGGEST_WAIT = 5.0  # seconds to wait for a trial just taken elsewhere to suggest its params


def _drawn_before(study: optuna.Study, trial: optuna.Trial) -> list[optuna.trial.FrozenTrial]:
    """The settled trials and the running ones numbered below `trial`, read after `trial`
    suggested its params, each with its params: a lower trial that another worker has just
    taken and not yet suggested is waited for (up to SUGGEST_WAIT; longer, its worker is
    gone, and one taken longer ago than that is not waited for at all). The lower number
    keeps a configuration two workers drew at once, so the higher must see the lower's
    params before it decides."""
    deadline = time.monotonic() + SUGGEST_WAIT
    while True:
        drawn = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
            and (settled(t) or (t.state == TrialState.RUNNING and t.number < trial.number))
        ]
        now = datetime.datetime.now()
        suggesting = [
            t
            for t in drawn
            if not t.params
            and t.datetime_start is not None
            and (now - t.datetime_start).total_seconds() < SUGGEST_WAIT
        ]
        if not suggesting or time.monotonic() > deadline:
            return drawn
        time.sleep(0.05)


def round_item_free(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Is no other trial training, or done with, this seed-round trial's seed (the lowest
    trial number wins a race between workers)?"""
    item = round_item(trial)
    return not any(
        round_item(t) == item
        and (settled(t) or (t.state == TrialState.RUNNING and t.number < trial.number))
        for t in study.get_trials(deepcopy=False)
        if t.number != trial.number
    )


def next_round_trial(
    study: optuna.Study, config: StudyConfig, client: MlflowClient | None
) -> optuna.Trial | None:
    """The next seed of the seed rounds for this worker: queued and taken as a trial of its
    configuration's params. Waits while other workers train what the next round depends on
    (a trial of a dead worker is failed and its work queued again); None when the rounds are
    over."""
    while True:
        interrupt.check()
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return next_trial(study, config, client)
        if client is not None and fail_stale_trials(study, client):
            enqueue_grid(study, config)
            continue
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if any(round_item(t) is None for t in running):  # a first trial: rounds need it
            time.sleep(WAIT_SECONDS)
            continue
        plan = round_plan(study, config)
        if plan is None or plan.done:
            return None
        taken = {item for t in running + queued if (item := round_item(t))}
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
        study.enqueue_trial(
            first.params,
            user_attrs={EXTENDS: first.number, ROUND_SEED: seed, ROUND_CONFIGURATION: label},
        )
