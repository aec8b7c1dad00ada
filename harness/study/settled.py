"""Which trials count: the rules every reader shares (the runner, the end-of-study table,
the report, compare). A configuration is settled by the trials that finished it; seed-round
trials extend it. Imports neither torch nor MLflow, so reading a study stays light.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.config import StudyConfig
from harness.study import seed_rounds

OUTCOME = "outcome"  # trial user attribute: finished | pruned | diverged | interrupted | ...
EXTENDS = "extends"  # user attr of a seed-round trial: its configuration's first trial
ROUND_SEED = "round_seed"  # user attr of a seed-round trial: the one seed it trains
# User attr of a seed-round trial: its configuration's `grid_key`. Its params exist only once
# the worker that takes it has suggested them; until then only this names what it trains.
ROUND_CONFIGURATION = "round_configuration"
STOPPED = "stopped"  # trial user attr of a search with adaptive seeds: why its seeds ended


def grid_key(params: dict[str, Any]) -> str:
    """A grid point's identity, kept as the trial's user attribute `grid_point`."""
    return json.dumps(params, sort_keys=True)


def all_run_ids(attrs: dict[str, Any]) -> list[str]:
    """A trial's MLflow runs: its parent run (if any) and its seeds' runs."""
    parent = attrs.get("mlflow_parent_run_id")
    return ([parent] if parent else []) + list(attrs.get("mlflow_run_ids", []))


def settled(trial: optuna.trial.FrozenTrial) -> bool:
    """Has this trial settled its configuration (complete, pruned, or diverged: a result too)?"""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) == "diverged"


def settled_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials whose runs every reader counts: one per configuration that has a result."""
    return [t for t in study.get_trials(deepcopy=False) if settled(t)]


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The settled trials, less a seed-round trial whose seed an earlier trial of its
    configuration already trained: each (configuration, seed) counts once. (Workers before
    this version could both train one seed: they missed a seed-round trial that had not
    suggested its params yet. The lowest trial number counts, first trials before rounds.)"""
    trained: set[tuple[str, int]] = set()
    counted = []
    for trial in sorted(settled_trials(study), key=lambda t: (EXTENDS in t.user_attrs, t.number)):
        item = round_item(trial)
        if item in trained:
            continue
        label = grid_key(trial.params)
        trained.update((label, int(run["seed"])) for run in trial.user_attrs.get("runs", []))
        counted.append(trial)
    return counted


def settled_run_ids(study: optuna.Study) -> set[str]:
    """The MLflow runs of the counted trials (the runs a report or a table may count)."""
    return {i for t in counted_trials(study) for i in t.user_attrs.get("mlflow_run_ids", [])}


def covers_its_point(trial: optuna.trial.FrozenTrial) -> bool:
    """Does this trial account for its grid point (done, being done, or queued)?"""
    return settled(trial) or trial.state in (TrialState.RUNNING, TrialState.WAITING)


def round_item(trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    """(configuration, seed) of a seed-round trial, None for a configuration's first trial."""
    if EXTENDS not in trial.user_attrs:
        return None
    label = trial.user_attrs.get(ROUND_CONFIGURATION) or grid_key(trial.params)  # older stores
    return label, int(trial.user_attrs[ROUND_SEED])


def configurations(
    study: optuna.Study, config: StudyConfig
) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """The settled trials of each configuration (by `grid_key` of its params): its first
    trial, then its seed-round trials in order (`counted_trials`: each seed once)."""
    grouped: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in counted_trials(study):
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


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials no other complete trial beats in every objective (Optuna's
    `best_trials`: the Pareto front; for one objective, the best trial and its ties), in
    trial order."""
    return sorted(study.best_trials, key=lambda t: t.number)


def running_trials(study: optuna.Study) -> list[int]:
    """Trials still running (in other workers, once this one is done)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
